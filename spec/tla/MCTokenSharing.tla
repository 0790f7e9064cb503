---------------------------- MODULE MCTokenSharing ----------------------------
(***************************************************************************)
(* Model-checking wrapper.  TLC's .cfg files cannot write functions, so    *)
(* the thread-to-process maps are defined here and a config substitutes    *)
(* one (ProcOf <- DuoProcOf).  Each definition is a literal value, so      *)
(* spec/token.py can read it as well.                                      *)
(***************************************************************************)
EXTENDS TokenSharing

\* MCTokenSharingSmall and its bad variants: one thread in each of two
\* processes.
DuoProcOf == [t1 |-> "p1", t2 |-> "p2"]

\* MCTokenSharingBadRecall: one thread in each of three processes (the
\* monitor's queue can hold two).
ThreeProcOf == [t1 |-> "p1", t2 |-> "p2", t3 |-> "p3"]

\* MCTokenSharing, MCTokenSharingLiveness: two threads in p1 (a takeover
\* within a process), one in each of p2 and p3.
FullProcOf == [t1 |-> "p1", t2 |-> "p1", t3 |-> "p2", t4 |-> "p3"]
===============================================================================
