----------------------------- MODULE FifoChannel -----------------------------
(***************************************************************************)
(* The abstract channel that a byte ring must implement: the sender        *)
(* appends to `sent`, the receiver takes a prefix of it into `rcvd`.       *)
(* Nothing is lost, duplicated, reordered or altered.  RingCredit refines  *)
(* this module (see RingCredit!FifoRefinement).                           *)
(*                                                                         *)
(* The actions are written over primed values rather than with an         *)
(* existential over Seq(...) so that TLC can check a refinement step by    *)
(* evaluating them on a pair of concrete states.                          *)
(***************************************************************************)
EXTENDS Naturals, Sequences

VARIABLES sent, rcvd

vars == <<sent, rcvd>>

IsPrefix(s, t) == Len(s) <= Len(t) /\ SubSeq(t, 1, Len(s)) = s

Init == sent = <<>> /\ rcvd = <<>>

\* The sender appends one or more items.
Send == /\ Len(sent') > Len(sent)
        /\ IsPrefix(sent, sent')
        /\ rcvd' = rcvd

\* The receiver takes the next items, in order, exactly as they were sent.
Receive == /\ Len(rcvd') > Len(rcvd)
           /\ rcvd' = SubSeq(sent, 1, Len(rcvd'))
           /\ sent' = sent

Next == Send \/ Receive

Spec == Init /\ [][Next]_vars
===============================================================================
