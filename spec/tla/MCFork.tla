------------------------------- MODULE MCFork -------------------------------
(***************************************************************************)
(* Model-checking wrapper for Fork.  Every constant of Fork is a value a   *)
(* .cfg can write, so this module adds nothing; the configs name it so     *)
(* that a later substitution has a home (as MCTokenSharing does).          *)
(***************************************************************************)
EXTENDS Fork
===============================================================================
