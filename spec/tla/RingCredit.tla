------------------------------ MODULE RingCredit ------------------------------
(***************************************************************************)
(* SocksDirect's per-socket ring buffer with batched credit return.         *)
(*                                                                         *)
(* One sender, one receiver, one ring of C bytes.  Messages of 1..MaxLen   *)
(* bytes are placed back to back and wrap around the end of the ring.      *)
(* Positions (tail, head, ...) are stream offsets that only grow; the ring *)
(* slot of stream position p is p % C.  The byte at stream position p has  *)
(* the value (p % (K - 1)) + 1, never 0, and 0 marks a slot never written  *)
(* (as in a fresh memfd), so any loss, duplication, reordering or stale    *)
(* byte shows up as a wrong value as long as K - 1 does not divide C.      *)
(*                                                                         *)
(* Two transports, chosen once at Init:                                    *)
(*  "shm"  - one ring in shared memory.  The sender writes the receiver's  *)
(*           ring directly and reads the receiver's head directly, so its  *)
(*           view of the free space is always exact.                       *)
(*  "rdma" - two copies.  The sender writes its own copy (sbuf) and sends  *)
(*           the bytes, with the new tail, as one remote write through an  *)
(*           in-order channel (wire).  The receiver returns freed space as *)
(*           credits through a second in-order channel (cwire), in batches *)
(*           of at least B bytes.                                          *)
(*                                                                         *)
(* The credit deadlock.  With batching alone, a sender whose next message  *)
(* does not fit waits for credit while the receiver, having read all there *)
(* is, holds fewer than B uncredited bytes and returns nothing: both wait  *)
(* forever whenever B > C - MaxLen + 1.  The fix (CreditRequest = TRUE):   *)
(* a blocked sender sends a credit request behind its data on the same     *)
(* in-order channel, and a receiver that has seen a request returns all    *)
(* it has freed regardless of B.  MCRingCreditBad.cfg turns the fix off,   *)
(* and TLC finds the deadlock.                                             *)
(***************************************************************************)
EXTENDS Naturals, Sequences

CONSTANTS
    C,              \* ring capacity in bytes
    B,              \* credit batch: the receiver returns credit once >= B bytes are freed
    MaxLen,         \* longest message the sender writes at once
    MaxBytes,       \* total bytes the sender may send (bounds the model)
    K,              \* byte values are 1..K-1; the byte at position p is (p % (K-1)) + 1
    CreditRequest   \* TRUE: a blocked sender asks for credit (the fix)

ASSUME /\ C \in Nat \ {0}
       /\ B \in Nat \ {0}
       /\ MaxLen \in 1..C
       /\ MaxBytes \in Nat
       /\ K \in Nat \ {0, 1}
       /\ C % (K - 1) /= 0   \* else a stale byte from one lap back looks right
       /\ CreditRequest \in BOOLEAN

VARIABLES
    transport,  \* "shm" or "rdma", fixed at Init
    want,       \* length of the message the sender's app waits to write; 0 = none
    tail,       \* stream position the sender has written up to
    shead,      \* the sender's view of head: it may write up to shead + C
    asked,      \* the sender has a credit request outstanding
    sbuf,       \* "rdma": the sender's copy of the ring
    wire,       \* "rdma": remote writes in flight, sender to receiver, in order
    buf,        \* the receiver's ring (the shared ring itself under "shm")
    rtail,      \* the receiver's view of tail: it may read up to here
    head,       \* stream position the receiver has consumed up to
    credited,   \* "rdma": the head last returned to the sender as credit
    creq,       \* "rdma": the receiver has seen a credit request not yet answered
    cwire,      \* "rdma": credit returns in flight, receiver to sender, in order
    got         \* history: every byte the receiver's app has received

vars == <<transport, want, tail, shead, asked, sbuf, wire,
          buf, rtail, head, credited, creq, cwire, got>>

Slots == 0..(C - 1)
Empty == 0                          \* a slot never written (a fresh memfd is zeros)
Val(p) == (p % (K - 1)) + 1         \* the byte at stream position p
Stream(n) == [j \in 1..n |-> Val(j - 1)]   \* the first n bytes of the stream

\* Bytes the sender believes it may still write.
Free == C - (tail - shead)

\* Ring r after writing the sequence of bytes v from stream position pos on.
Put(r, pos, v) ==
    [i \in Slots |-> LET j == ((i + C - (pos % C)) % C) + 1
                     IN IF j <= Len(v) THEN v[j] ELSE r[i]]

DataMsg == [kind : {"data"}, pos : Nat, vals : Seq(1..(K - 1))]
AskMsg == [kind : {"ask"}]

TypeOK ==
    /\ transport \in {"shm", "rdma"}
    /\ want \in 0..MaxLen
    /\ {tail, shead, rtail, head, credited} \subseteq Nat
    /\ asked \in BOOLEAN /\ creq \in BOOLEAN
    /\ sbuf \in [Slots -> 0..(K - 1)] /\ buf \in [Slots -> 0..(K - 1)]
    /\ wire \in Seq(DataMsg \cup AskMsg)
    /\ cwire \in Seq(Nat)
    /\ got \in Seq(1..(K - 1))

Init ==
    /\ transport \in {"shm", "rdma"}
    /\ want = 0
    /\ tail = 0 /\ shead = 0 /\ rtail = 0 /\ head = 0 /\ credited = 0
    /\ asked = FALSE /\ creq = FALSE
    /\ sbuf = [i \in Slots |-> Empty]
    /\ buf = [i \in Slots |-> Empty]
    /\ wire = <<>> /\ cwire = <<>>
    /\ got = <<>>

-------------------------------------------------------------------------------
(* Sender actions *)

\* The sender's app asks to send a message of n bytes.
Want(n) ==
    /\ want = 0
    /\ n \in 1..MaxLen
    /\ tail + n <= MaxBytes
    /\ want' = n
    /\ UNCHANGED <<transport, tail, shead, asked, sbuf, wire,
                   buf, rtail, head, credited, creq, cwire, got>>

\* The message fits: place it back to back after tail and publish the new tail.
\* Under "shm" the bytes and then the tail are stored into the shared ring;
\* under "rdma" into the sender's copy, and one remote write carries both.
Write ==
    /\ want > 0
    /\ want <= Free
    /\ LET v == [j \in 1..want |-> Val(tail + j - 1)] IN
       IF transport = "shm"
       THEN /\ buf' = Put(buf, tail, v)
            /\ rtail' = tail + want
            /\ UNCHANGED <<sbuf, wire>>
       ELSE /\ sbuf' = Put(sbuf, tail, v)
            /\ wire' = Append(wire, [kind |-> "data", pos |-> tail, vals |-> v])
            /\ UNCHANGED <<buf, rtail>>
    /\ tail' = tail + want
    /\ want' = 0
    /\ UNCHANGED <<transport, shead, asked, head, credited, creq, cwire, got>>

\* "rdma": the message does not fit; ask the receiver for credit, behind the data.
AskCredit ==
    /\ CreditRequest
    /\ transport = "rdma"
    /\ want > Free
    /\ ~asked
    /\ wire' = Append(wire, [kind |-> "ask"])
    /\ asked' = TRUE
    /\ UNCHANGED <<transport, want, tail, shead, sbuf,
                   buf, rtail, head, credited, creq, cwire, got>>

\* "rdma": a credit return arrives; the sender may write up to the returned head + C.
GetCredit ==
    /\ cwire /= <<>>
    /\ shead' = Head(cwire)
    /\ cwire' = Tail(cwire)
    /\ asked' = FALSE
    /\ UNCHANGED <<transport, want, tail, sbuf, wire,
                   buf, rtail, head, credited, creq, got>>

-------------------------------------------------------------------------------
(* Receiver actions *)

\* "rdma": the oldest remote write lands in the receiver's memory.
Deliver ==
    /\ wire /= <<>>
    /\ LET m == Head(wire) IN
       IF m.kind = "data"
       THEN /\ buf' = Put(buf, m.pos, m.vals)
            /\ rtail' = m.pos + Len(m.vals)
            /\ UNCHANGED creq
       ELSE /\ creq' = TRUE
            /\ UNCHANGED <<buf, rtail>>
    /\ wire' = Tail(wire)
    /\ UNCHANGED <<transport, want, tail, shead, asked, sbuf,
                   head, credited, cwire, got>>

\* The receiver's app takes the next k bytes and frees their space.
\* Under "shm" the sender reads head directly, so its view moves at once.
Recv(k) ==
    /\ k \in 1..(rtail - head)
    /\ got' = got \o [j \in 1..k |-> buf[(head + j - 1) % C]]
    /\ head' = head + k
    /\ shead' = IF transport = "shm" THEN head + k ELSE shead
    /\ UNCHANGED <<transport, want, tail, asked, sbuf, wire,
                   buf, rtail, credited, creq, cwire>>

\* "rdma": return freed space once a batch has accumulated, or on request.
ReturnCredit ==
    /\ transport = "rdma"
    /\ head > credited
    /\ head - credited >= B \/ creq
    /\ cwire' = Append(cwire, head)
    /\ credited' = head
    /\ creq' = FALSE
    /\ UNCHANGED <<transport, want, tail, shead, asked, sbuf, wire,
                   buf, rtail, head, got>>

-------------------------------------------------------------------------------

\* All that was sent has been read and nothing is in flight: the model stops.
\* (Stuttering here keeps TLC's deadlock check for real deadlocks only.)
Done ==
    /\ tail = MaxBytes /\ head = MaxBytes /\ want = 0
    /\ wire = <<>> /\ cwire = <<>>
    /\ ~ENABLED ReturnCredit
    /\ UNCHANGED vars

Next ==
    \/ \E n \in 1..MaxLen : Want(n)
    \/ Write
    \/ AskCredit
    \/ GetCredit
    \/ Deliver
    \/ \E k \in 1..C : Recv(k)
    \/ ReturnCredit
    \/ Done

\* The apps need not send, but once data or credit is under way, every step
\* that moves it on is eventually taken, and the receiver's app keeps reading.
Fairness ==
    /\ WF_vars(Write)
    /\ WF_vars(AskCredit)
    /\ WF_vars(GetCredit)
    /\ WF_vars(Deliver)
    /\ WF_vars(\E k \in 1..C : Recv(k))
    /\ WF_vars(ReturnCredit)

Spec == Init /\ [][Next]_vars /\ Fairness

-------------------------------------------------------------------------------
(* Safety *)

\* What the receiver's app got is exactly the start of what was sent.
DeliveredPrefix == got = Stream(head)

\* Every byte between head and the receiver's tail is the one sent there:
\* nothing unread was overwritten.
NoOverwrite == \A p \in head..(rtail - 1) : buf[p % C] = Val(p)

\* Positions stay in order and the ring never holds more than C bytes.
Bounds ==
    /\ shead <= head /\ head <= rtail /\ rtail <= tail
    /\ tail - head <= C

\* The sender's view of free space never exceeds the true free space.
SenderViewSafe == Free <= C - (tail - head)

\* Credits returned never exceed what was freed, and none is counted twice.
CreditsAccounted ==
    /\ transport = "rdma" => shead <= credited
    /\ credited <= head
    /\ \A i \in 1..Len(cwire) : /\ cwire[i] <= credited
                                /\ i > 1 => cwire[i - 1] < cwire[i]

\* The ring refines the abstract FIFO channel.
Fifo == INSTANCE FifoChannel WITH sent <- Stream(tail), rcvd <- got
FifoRefinement == Fifo!Spec

-------------------------------------------------------------------------------
(* Liveness *)

\* Everything sent is eventually delivered to the receiver's app.  The stream is
\* finite (MaxBytes) and the sending app may stop at any time, so this says:
\* in the end, the receiver has read all that was sent.
AllDelivered == <>[](head = tail)

\* No credit deadlock: a message the sender wants to write is eventually written.
WritesComplete == (want > 0) ~> (want = 0)

\* A full batch of freed space is eventually credited back, and every credit
\* in flight eventually reaches the sender.
CreditsReturned == (transport = "rdma" /\ head - credited >= B) ~> (credited = head)
CreditsArrive == (cwire /= <<>>) ~> (cwire = <<>>)
===============================================================================
