------------------------------ MODULE RingWakeup ------------------------------
(***************************************************************************)
(* The ring's sleep/wake handshake (docs/ring.md, "Waiting and waking") on  *)
(* x86-TSO.                                                                *)
(*                                                                         *)
(* One writer (the waker for data) and one reader (the sleeper), data side *)
(* only.  The space side is the same protocol with the roles swapped       *)
(* (writer sleeps on writer_sleeping and space_efd, reader wakes it after  *)
(* storing head), so this module covers it as well.                        *)
(*                                                                         *)
(* Shared memory holds two words: tail and the reader's sleeping flag.     *)
(* The reader's head is its own variable: on the data side nobody else     *)
(* loads it, so when its store becomes visible does not matter here.      *)
(*                                                                         *)
(* x86-TSO: each process has a FIFO store buffer.  A store goes to the     *)
(* end of its own buffer; a load returns the newest buffered store of its  *)
(* own to that word, else memory; a fence, and the locked exchange, wait   *)
(* until their own buffer is empty; Flush moves the oldest buffered store  *)
(* of one process to memory at any time.                                   *)
(*                                                                         *)
(* The handshake is Dekker's:                                              *)
(*   reader: store flag = 1; fence; load tail -> data? clear flag, read;   *)
(*           else block until the eventfd counter is > 0, drain it, retry. *)
(*   writer: store tail; fence; load flag -> 1? exchange it with 0, and    *)
(*           if it was still 1, add 1 to the eventfd counter.              *)
(* Fence = FALSE drops both fences, Recheck = FALSE drops the reader's     *)
(* re-check: MCRingWakeupNoFence.cfg and MCRingWakeupNoRecheck.cfg, where  *)
(* TLC finds the lost wake-up.                                             *)
(***************************************************************************)
EXTENDS Naturals, Sequences

CONSTANTS
    N,          \* messages the writer writes (bounds the model)
    Fence,      \* TRUE: each side's full fence between its store and its load
    Recheck     \* TRUE: the reader re-checks tail after publishing its flag

ASSUME /\ N \in Nat \ {0}
       /\ Fence \in BOOLEAN
       /\ Recheck \in BOOLEAN

VARIABLES
    mem,    \* shared memory: [tail |-> stream position, flag |-> reader_sleeping]
    wbuf,   \* the writer's store buffer, oldest first: <<word, value>> pairs
    rbuf,   \* the reader's store buffer, the same
    sent,   \* messages the writer has written (its own copy of tail)
    head,   \* messages the reader has consumed
    efd,    \* the data eventfd's counter
    wpc,    \* the writer's next step: "idle" "fence" "load" "xchg" "signal"
    rpc     \* the reader's next step: "try" "arm" "fence" "recheck" "block"

vars == <<mem, wbuf, rbuf, sent, head, efd, wpc, rpc>>

Words == {"tail", "flag"}
Store == Words \X Nat

\* What a process with store buffer b reads from word w: its own newest
\* buffered store to w, else memory (TSO store forwarding).
Load(b, w) ==
    LET hits == {i \in 1..Len(b) : b[i][1] = w}
        last == CHOOSE i \in hits : \A j \in hits : j <= i
    IN IF hits = {} THEN mem[w] ELSE b[last][2]

TypeOK ==
    /\ mem \in [Words -> Nat]
    /\ wbuf \in Seq(Store) /\ rbuf \in Seq(Store)
    /\ sent \in 0..N /\ head \in 0..N
    /\ efd \in Nat
    /\ wpc \in {"idle", "fence", "load", "xchg", "signal"}
    /\ rpc \in {"try", "arm", "fence", "recheck", "block"}

Init ==
    /\ mem = [w \in Words |-> 0]
    /\ wbuf = <<>> /\ rbuf = <<>>
    /\ sent = 0 /\ head = 0
    /\ efd = 0
    /\ wpc = "idle" /\ rpc = "try"

-------------------------------------------------------------------------------
(* Writer actions *)

\* Write the next message: the bytes, then the new tail, go into the store buffer.
\* (The bytes are not modelled: x86 keeps the writer's stores in order, so the
\* reader sees them whenever it sees the tail.)
Write ==
    /\ wpc = "idle"
    /\ sent < N
    /\ wbuf' = Append(wbuf, <<"tail", sent + 1>>)
    /\ sent' = sent + 1
    /\ wpc' = "fence"
    /\ UNCHANGED <<mem, rbuf, head, efd, rpc>>

\* The full fence: waits until the tail store has reached memory.
WriterFence ==
    /\ wpc = "fence"
    /\ Fence => wbuf = <<>>
    /\ wpc' = "load"
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, head, efd, rpc>>

\* Load the reader's sleeping flag; only a set flag is worth a locked exchange.
LoadFlag ==
    /\ wpc = "load"
    /\ wpc' = IF Load(wbuf, "flag") = 1 THEN "xchg" ELSE "idle"
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, head, efd, rpc>>

\* Exchange the flag with 0 (a locked instruction: drains the buffer first).
\* Only the exchange that takes the flag down signals: one signal per sleep.
ClearFlag ==
    /\ wpc = "xchg"
    /\ wbuf = <<>>
    /\ mem' = [mem EXCEPT !["flag"] = 0]
    /\ wpc' = IF mem["flag"] = 1 THEN "signal" ELSE "idle"
    /\ UNCHANGED <<wbuf, rbuf, sent, head, efd, rpc>>

\* Write the eventfd (a system call: the counter keeps it until drained).
Signal ==
    /\ wpc = "signal"
    /\ efd' = efd + 1
    /\ wpc' = "idle"
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, head, rpc>>

-------------------------------------------------------------------------------
(* Reader actions *)

\* Try to read: load tail; consume what is there, or go to sleep.
TryRead ==
    /\ rpc = "try"
    /\ LET t == Load(rbuf, "tail") IN
       IF t > head
       THEN /\ head' = t
            /\ UNCHANGED rpc
       ELSE /\ rpc' = "arm"
            /\ UNCHANGED head
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, efd, wpc>>

\* Publish the sleeping flag (into the store buffer).
Arm ==
    /\ rpc = "arm"
    /\ rbuf' = Append(rbuf, <<"flag", 1>>)
    /\ rpc' = "fence"
    /\ UNCHANGED <<mem, wbuf, sent, head, efd, wpc>>

\* The full fence: waits until the flag store has reached memory.
ReaderFence ==
    /\ rpc = "fence"
    /\ Fence => rbuf = <<>>
    /\ rpc' = IF Recheck THEN "recheck" ELSE "block"
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, head, efd, wpc>>

\* Re-check tail: data that came meanwhile is read, the flag taken down, no sleep.
RecheckTail ==
    /\ rpc = "recheck"
    /\ LET t == Load(rbuf, "tail") IN
       IF t > head
       THEN /\ head' = t
            /\ rbuf' = Append(rbuf, <<"flag", 0>>)
            /\ rpc' = "try"
       ELSE /\ rpc' = "block"
            /\ UNCHANGED <<head, rbuf>>
    /\ UNCHANGED <<mem, wbuf, sent, efd, wpc>>

\* Blocked in poll() until the eventfd counter is > 0; drain it and retry.
Wake ==
    /\ rpc = "block"
    /\ efd > 0
    /\ efd' = 0
    /\ rpc' = "try"
    /\ UNCHANGED <<mem, wbuf, rbuf, sent, head, wpc>>

-------------------------------------------------------------------------------
(* The memory system *)

\* The oldest store in p's buffer reaches memory.
Flush(p) ==
    LET b == IF p = "w" THEN wbuf ELSE rbuf IN
    /\ b /= <<>>
    /\ mem' = [mem EXCEPT ![Head(b)[1]] = Head(b)[2]]
    /\ IF p = "w" THEN wbuf' = Tail(wbuf) /\ UNCHANGED rbuf
                  ELSE rbuf' = Tail(rbuf) /\ UNCHANGED wbuf
    /\ UNCHANGED <<sent, head, efd, wpc, rpc>>

-------------------------------------------------------------------------------

\* All was written and read, the reader sleeps with nothing to wake it, and
\* memory is quiet: the model stops.  (Stuttering here keeps TLC's deadlock
\* check for real deadlocks only.)
Done ==
    /\ sent = N /\ head = N
    /\ wpc = "idle" /\ rpc = "block" /\ efd = 0
    /\ wbuf = <<>> /\ rbuf = <<>>
    /\ UNCHANGED vars

Next ==
    \/ Write \/ WriterFence \/ LoadFlag \/ ClearFlag \/ Signal
    \/ TryRead \/ Arm \/ ReaderFence \/ RecheckTail \/ Wake
    \/ \E p \in {"w", "r"} : Flush(p)
    \/ Done

\* Every process step that can be taken is eventually taken, and every
\* buffered store eventually reaches memory.
Fairness ==
    /\ WF_vars(Write) /\ WF_vars(WriterFence) /\ WF_vars(LoadFlag)
    /\ WF_vars(ClearFlag) /\ WF_vars(Signal)
    /\ WF_vars(TryRead) /\ WF_vars(Arm) /\ WF_vars(ReaderFence)
    /\ WF_vars(RecheckTail) /\ WF_vars(Wake)
    /\ WF_vars(Flush("w")) /\ WF_vars(Flush("r"))

Spec == Init /\ [][Next]_vars /\ Fairness

-------------------------------------------------------------------------------
(* Safety *)

\* Never does the reader sleep on unread data that nobody will signal: blocked,
\* eventfd empty, no store left to land, the writer between messages or done.
NoLostWakeup ==
    ~ /\ rpc = "block" /\ efd = 0
      /\ wbuf = <<>> /\ rbuf = <<>>
      /\ wpc = "idle"
      /\ head < mem["tail"]

\* The reader never reads past what was written; memory never runs ahead of
\* the writer.
Bounds == head <= mem["tail"] /\ mem["tail"] <= sent

-------------------------------------------------------------------------------
(* Liveness *)

\* Everything is written, and everything written is eventually read.
AllRead == <>[](head = N)
===============================================================================
