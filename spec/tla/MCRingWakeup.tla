----------------------------- MODULE MCRingWakeup -----------------------------
(* Model-checking wrapper: the constants for TLC live in the .cfg files. *)
EXTENDS RingWakeup
===============================================================================
