---------------------------- MODULE TokenSharing ----------------------------
(***************************************************************************)
(* Token-based sharing of one socket end among threads and processes       *)
(* (after SocksDirect, SIGCOMM 2019); the contract of impl/token, of the   *)
(* monitor's token table and of the token checks in the ring's C calls.    *)
(*                                                                         *)
(* The end has a send token, which guards writing its tx ring, and a recv  *)
(* token, which guards reading its rx ring.  Each token is one word of     *)
(* shared memory, [owner, busy, want]:                                     *)
(*   owner  the thread that owns it, or NoThread ("parked": the process    *)
(*          the monitor names holds it, but no thread has taken it);       *)
(*   busy   the owner is inside an operation (a whole send or recv call);  *)
(*   want   a thread of the owner's process waits for the token.           *)
(*                                                                         *)
(* Threads of one process.  The fast path, Enter, turns [t, idle, no want] *)
(* into [t, busy] with one compare-and-swap: no lock, no system call.  Any *)
(* other word sends the thread to the slow path: it joins its process's    *)
(* FIFO queue lq (Queue); the head of the queue Takes the word once the    *)
(* process holds the token and the word is not busy (a busy owner is told  *)
(* by Flag, which sets want; Flag(p, k) is a step of whoever heads p's     *)
(* queue, a thread or the agent).  The owner Exits at the end of its call, *)
(* clearing busy only: a want left set makes its next Enter fail, so it    *)
(* queues behind the waiters.                                              *)
(*                                                                         *)
(* Processes, through the monitor.  A process whose queue is not empty     *)
(* and that does not hold the token Asks the monitor (TAKE).  The monitor  *)
(* grants a free token at once, else queues the process and RECALLs the    *)
(* holder once.  The holder's agent thread joins the local queue as a      *)
(* pseudo-waiter (Recall); at the head, with the word not busy, it parks   *)
(* the word and sends RELEASE (Release); the monitor passes the token to   *)
(* the first process queued (MonRelease, GRANT) and, when more wait,       *)
(* RECALLs the new holder at once.  Messages travel in one FIFO channel    *)
(* per process and direction: toMon[p] (p to the monitor) and toProc[p]    *)
(* (the monitor to p's agent).                                             *)
(*                                                                         *)
(* Death.  A process of Mortal may die at any time (Die): its threads      *)
(* stop, a send call possibly cut short, its bytes so far staying in the   *)
(* ring; its memory (lq, pheld, asked) is gone.  The monitor notices later *)
(* (Reclaim): it parks the word of every token p holds and passes it on as *)
(* MonRelease does (GRANT, and RECALL when more wait), drops p from every  *)
(* queue and drops the messages to and from p.                             *)
(*                                                                         *)
(* Data.  Send calls write CallLen bytes into the tx ring (capacity Cap)   *)
(* as it has room (Write); the peer drains it one byte at a time           *)
(* (PeerRead) into peerGot.  A byte of a send call is <<t, c, j>>: byte j  *)
(* of thread t's call number c.  The peer writes bytes 1, 2, 3, ... into   *)
(* the rx ring while some reader waits (PeerWrite); a recv call reads what *)
(* is there, up to CallLen bytes (Read), logged in rgot as <<t, c, v>>.    *)
(*                                                                         *)
(* Three switches turn on known-bad variants that TLC must reject:         *)
(*   WaitBusy  = FALSE  Take and Release do not wait for the owner's       *)
(*                      operation to end (they ignore busy);               *)
(*   ReRecall  = FALSE  MonRelease and Reclaim do not RECALL the new       *)
(*                      holder when more processes wait: they starve;      *)
(*   KeepQueue = FALSE  Reclaim forgets the queue of a token whose holder  *)
(*                      died: the requests in it are lost.                 *)
(***************************************************************************)
EXTENDS Naturals, Sequences, FiniteSets

CONSTANTS
    Procs,      \* the processes that share the socket end
    Threads,    \* their threads that call send or recv on it
    ProcOf,     \* ProcOf[t]: the process of thread t
    Tokens,     \* a non-empty subset of {"send", "recv"}
    Creator,    \* the process that holds both tokens at the start
    CallLen,    \* bytes per send call; most bytes per recv call
    Calls,      \* calls each thread makes
    Cap,        \* capacity of each ring, in bytes
    Mortal,     \* the processes that may die (kill -9); {}: none does
    WaitBusy,   \* TRUE: Take and Release wait for busy to clear (correct)
    ReRecall,   \* TRUE: a new holder is recalled at once while others wait (correct)
    KeepQueue   \* TRUE: Reclaim passes a dead holder's token on (correct)

\* Three names that no process or thread may have.
NoThread == "NoThread"  \* the owner of a parked word
NoProc == "NoProc"      \* the monitor's holder of a free token
Agent == "Agent"        \* a process's agent thread as a waiter in its queue

ASSUME /\ Procs # {} /\ Threads # {}
       /\ ProcOf \in [Threads -> Procs]
       /\ Tokens # {} /\ Tokens \subseteq {"send", "recv"}
       /\ Creator \in Procs
       /\ CallLen \in Nat \ {0}
       /\ Calls \in Nat
       /\ Cap \in Nat \ {0}
       /\ {NoThread, NoProc, Agent} \cap (Procs \cup Threads) = {}
       /\ Mortal \subseteq Procs
       /\ \A b \in {WaitBusy, ReRecall, KeepQueue} : b \in BOOLEAN

VARIABLES
    \* shared memory: the token words and the rings
    word,       \* word[k] = [owner, busy, want]
    tx,         \* the tx ring's contents, oldest first: send bytes <<t, c, j>>
    rx,         \* the rx ring's contents, oldest first: stream positions
    \* threads
    pc,         \* pc[t]: "idle", "queued", "op", "done" or "dead"
    cur,        \* cur[t]: the token of t's call while queued or in op, else "none"
    calls,      \* calls[t]: calls t has started
    prog,       \* prog[t]: bytes written (send) or read (recv) by t's call in op
    \* each process, in its own memory
    lq,         \* lq[p][k]: p's FIFO queue of waiters for k: threads and Agent
    pheld,      \* pheld[p][k]: p holds k (granted and not released)
    asked,      \* asked[p][k]: p sent TAKE k and has not been granted yet
    \* the monitor
    holder,     \* holder[k]: the process the monitor gave k to, or NoProc
    queue,      \* queue[k]: the processes waiting for k, first served first
    recalled,   \* recalled[k]: a RECALL of k to its holder is outstanding
    cleaned,    \* cleaned[p]: the monitor has noticed p's death and reclaimed
    reclaims,   \* reclaims[p][k]: how often k was reclaimed from p (a ghost)
    \* the channels
    toMon,      \* toMon[p]: messages in flight from p to the monitor
    toProc,     \* toProc[p]: messages in flight from the monitor to p's agent
    \* the environment
    alive,      \* alive[p]: process p runs
    peerGot,    \* the send bytes the peer has read, in order
    rgot        \* the recv bytes the readers got, in order: <<t, c, v>>

vars == <<word, tx, rx, pc, cur, calls, prog, lq, pheld, asked, holder, queue,
          recalled, cleaned, reclaims, toMon, toProc, alive, peerGot, rgot>>

-------------------------------------------------------------------------------
(* Definitions *)

Word == [owner : Threads \cup {NoThread}, busy : BOOLEAN, want : BOOLEAN]
Parked == [owner |-> NoThread, busy |-> FALSE, want |-> FALSE]
Idle(t) == [owner |-> t, busy |-> FALSE, want |-> FALSE]   \* what Enter expects
Msg == [op : {"TAKE", "RELEASE", "RECALL", "GRANT"}, tok : Tokens]
M(op, k) == [op |-> op, tok |-> k]
PCs == {"idle", "queued", "op", "done", "dead"}

Range(s) == {s[i] : i \in DOMAIN s}
Min(a, b) == IF a < b THEN a ELSE b
Remove(s, x) == LET Keep(y) == y # x IN SelectSeq(s, Keep)
Count(s, Test(_)) == Cardinality({i \in DOMAIN s : Test(s[i])})
SendBytes == Threads \X (1..Calls) \X (1..CallLen)

\* A call is over: a send call wrote all its bytes, a recv call read some.
CallDone(t) == IF cur[t] = "send" THEN prog[t] = CallLen ELSE prog[t] > 0

\* Some live thread waits for data (the peer writes only then: bounds the model).
ReaderWaits == \E t \in Threads : pc[t] \in {"queued", "op"} /\ cur[t] = "recv"
                                  /\ prog[t] = 0

TypeOK ==
    /\ word \in [Tokens -> Word]
    /\ tx \in Seq(SendBytes) /\ Len(tx) <= Cap
    /\ rx \in Seq(Nat \ {0}) /\ Len(rx) <= Cap
    /\ pc \in [Threads -> PCs]
    /\ cur \in [Threads -> Tokens \cup {"none"}]
    /\ calls \in [Threads -> 0..Calls]
    /\ prog \in [Threads -> 0..CallLen]
    /\ lq \in [Procs -> [Tokens -> Seq(Threads \cup {Agent})]]
    /\ pheld \in [Procs -> [Tokens -> BOOLEAN]]
    /\ asked \in [Procs -> [Tokens -> BOOLEAN]]
    /\ holder \in [Tokens -> Procs \cup {NoProc}]
    /\ queue \in [Tokens -> Seq(Procs)]
    /\ recalled \in [Tokens -> BOOLEAN]
    /\ cleaned \in [Procs -> BOOLEAN]
    /\ reclaims \in [Procs -> [Tokens -> Nat]]
    /\ toMon \in [Procs -> Seq(Msg)]
    /\ toProc \in [Procs -> Seq(Msg)]
    /\ alive \in [Procs -> BOOLEAN]
    /\ peerGot \in Seq(SendBytes)
    /\ rgot \in Seq(Threads \X (1..Calls) \X (Nat \ {0}))

Init ==
    /\ word = [k \in Tokens |-> Parked]
    /\ tx = <<>>
    /\ rx = <<>>
    /\ pc = [t \in Threads |-> IF Calls > 0 THEN "idle" ELSE "done"]
    /\ cur = [t \in Threads |-> "none"]
    /\ calls = [t \in Threads |-> 0]
    /\ prog = [t \in Threads |-> 0]
    /\ lq = [p \in Procs |-> [k \in Tokens |-> <<>>]]
    /\ pheld = [p \in Procs |-> [k \in Tokens |-> p = Creator]]
    /\ asked = [p \in Procs |-> [k \in Tokens |-> FALSE]]
    /\ holder = [k \in Tokens |-> Creator]
    /\ queue = [k \in Tokens |-> <<>>]
    /\ recalled = [k \in Tokens |-> FALSE]
    /\ cleaned = [p \in Procs |-> FALSE]
    /\ reclaims = [p \in Procs |-> [k \in Tokens |-> 0]]
    /\ toMon = [p \in Procs |-> <<>>]
    /\ toProc = [p \in Procs |-> <<>>]
    /\ alive = [p \in Procs |-> TRUE]
    /\ peerGot = <<>>
    /\ rgot = <<>>

-------------------------------------------------------------------------------
(* Threads: the fast path, the local queue, the operation *)

\* t starts a call on k and finds the word idle in its own name: it sets
\* busy with one CAS, and runs its call.
Enter(t, k) ==
    /\ pc[t] = "idle"
    /\ word[k] = Idle(t)
    /\ word' = [word EXCEPT ![k].busy = TRUE]
    /\ pc' = [pc EXCEPT ![t] = "op"]
    /\ cur' = [cur EXCEPT ![t] = k]
    /\ calls' = [calls EXCEPT ![t] = @ + 1]
    /\ UNCHANGED <<tx, rx, prog, lq, pheld, asked, holder, queue, recalled, cleaned,
                   reclaims, toMon, toProc, alive, peerGot, rgot>>

\* The CAS of Enter fails (any other word): t joins its process's queue.
Queue(t, k) ==
    /\ pc[t] = "idle"
    /\ word[k] # Idle(t)
    /\ lq' = [lq EXCEPT ![ProcOf[t]][k] = Append(@, t)]
    /\ pc' = [pc EXCEPT ![t] = "queued"]
    /\ cur' = [cur EXCEPT ![t] = k]
    /\ calls' = [calls EXCEPT ![t] = @ + 1]
    /\ UNCHANGED <<word, tx, rx, prog, pheld, asked, holder, queue, recalled, cleaned,
                   reclaims, toMon, toProc, alive, peerGot, rgot>>

\* The head of p's queue finds the word busy: it sets want (so the owner
\* notifies the waiters at Exit, and cannot Enter again), then waits.
Flag(p, k) ==
    /\ alive[p]
    /\ pheld[p][k]
    /\ lq[p][k] # <<>>
    /\ word[k].busy
    /\ ~word[k].want
    /\ word' = [word EXCEPT ![k].want = TRUE]
    /\ UNCHANGED <<tx, rx, pc, cur, calls, prog, lq, pheld, asked, holder, queue,
                   recalled, cleaned, reclaims, toMon, toProc, alive, peerGot, rgot>>

\* t is first in its process's queue, the process holds k and the word is
\* not busy: t takes it (CAS) and runs its call.  The owner before may be
\* idle: a takeover within the process.  want is set only if the agent waits
\* behind t (t's Exit must then wake it to release); threads behind t are
\* woken when t leaves the queue and Flag for themselves if t stays busy.
Take(t, k) ==
    LET p == ProcOf[t] IN
    /\ pc[t] = "queued"
    /\ lq[p][k] # <<>>
    /\ Head(lq[p][k]) = t
    /\ pheld[p][k]
    /\ WaitBusy => ~word[k].busy
    /\ word' = [word EXCEPT ![k] = [owner |-> t, busy |-> TRUE,
                                    want |-> Agent \in Range(Tail(lq[p][k]))]]
    /\ lq' = [lq EXCEPT ![p][k] = Tail(@)]
    /\ pc' = [pc EXCEPT ![t] = "op"]
    /\ UNCHANGED <<tx, rx, cur, calls, prog, pheld, asked, holder, queue, recalled,
                   cleaned, reclaims, toMon, toProc, alive, peerGot, rgot>>

\* t's send call writes as many of its remaining bytes as the ring has room for.
Write(t) ==
    /\ pc[t] = "op"
    /\ cur[t] = "send"
    /\ prog[t] < CallLen
    /\ Len(tx) < Cap
    /\ LET n == Min(Cap - Len(tx), CallLen - prog[t]) IN
       /\ tx' = tx \o [i \in 1..n |-> <<t, calls[t], prog[t] + i>>]
       /\ prog' = [prog EXCEPT ![t] = @ + n]
    /\ UNCHANGED <<word, rx, pc, cur, calls, lq, pheld, asked, holder, queue, recalled,
                   cleaned, reclaims, toMon, toProc, alive, peerGot, rgot>>

\* t's recv call reads what the ring holds, up to CallLen bytes.
Read(t) ==
    /\ pc[t] = "op"
    /\ cur[t] = "recv"
    /\ prog[t] = 0
    /\ rx # <<>>
    /\ LET n == Min(Len(rx), CallLen) IN
       /\ rgot' = rgot \o [i \in 1..n |-> <<t, calls[t], rx[i]>>]
       /\ rx' = SubSeq(rx, n + 1, Len(rx))
       /\ prog' = [prog EXCEPT ![t] = n]
    /\ UNCHANGED <<word, tx, pc, cur, calls, lq, pheld, asked, holder, queue, recalled,
                   cleaned, reclaims, toMon, toProc, alive, peerGot>>

\* t's call is over: it clears busy (atomically; want stays, so the owner
\* queues behind the waiters for its next call).
Exit(t, k) ==
    /\ pc[t] = "op"
    /\ cur[t] = k
    /\ CallDone(t)
    /\ word' = [word EXCEPT ![k].busy = FALSE]
    /\ pc' = [pc EXCEPT ![t] = IF calls[t] = Calls THEN "done" ELSE "idle"]
    /\ cur' = [cur EXCEPT ![t] = "none"]
    /\ prog' = [prog EXCEPT ![t] = 0]
    /\ UNCHANGED <<tx, rx, calls, lq, pheld, asked, holder, queue, recalled, cleaned,
                   reclaims, toMon, toProc, alive, peerGot, rgot>>

-------------------------------------------------------------------------------
(* The peer end (the environment) *)

\* The peer reads the oldest byte of the tx ring.
PeerRead ==
    /\ tx # <<>>
    /\ peerGot' = Append(peerGot, Head(tx))
    /\ tx' = Tail(tx)
    /\ UNCHANGED <<word, rx, pc, cur, calls, prog, lq, pheld, asked, holder, queue,
                   recalled, cleaned, reclaims, toMon, toProc, alive, rgot>>

\* The peer writes the next byte of its stream into the rx ring, while a
\* reader waits and the ring has room.
PeerWrite ==
    /\ Len(rx) < Cap
    /\ ReaderWaits
    /\ rx' = Append(rx, Len(rgot) + Len(rx) + 1)
    /\ UNCHANGED <<word, tx, pc, cur, calls, prog, lq, pheld, asked, holder, queue,
                   recalled, cleaned, reclaims, toMon, toProc, alive, peerGot, rgot>>

-------------------------------------------------------------------------------
(* Processes and the monitor *)

\* p has waiters for k but does not hold it, and has not asked: TAKE.
Ask(p, k) ==
    /\ alive[p]
    /\ ~pheld[p][k]
    /\ ~asked[p][k]
    /\ lq[p][k] # <<>>
    /\ asked' = [asked EXCEPT ![p][k] = TRUE]
    /\ toMon' = [toMon EXCEPT ![p] = Append(@, M("TAKE", k))]
    /\ UNCHANGED <<word, tx, rx, pc, cur, calls, prog, lq, pheld, holder, queue,
                   recalled, cleaned, reclaims, toProc, alive, peerGot, rgot>>

\* The monitor reads TAKE k from p.  A free token goes to p at once; else
\* p waits in the queue (once) and the holder is recalled (once).
MonTake(p, k) ==
    /\ toMon[p] # <<>>
    /\ Head(toMon[p]) = M("TAKE", k)
    /\ IF holder[k] = NoProc
       THEN /\ holder' = [holder EXCEPT ![k] = p]
            /\ toMon' = [toMon EXCEPT ![p] = Tail(@)]
            /\ toProc' = [toProc EXCEPT ![p] = Append(@, M("GRANT", k))]
            /\ UNCHANGED <<queue, recalled>>
       ELSE /\ queue' = IF p \in Range(queue[k]) THEN queue
                        ELSE [queue EXCEPT ![k] = Append(@, p)]
            /\ recalled' = [recalled EXCEPT ![k] = TRUE]
            /\ toMon' = [toMon EXCEPT ![p] = Tail(@)]
            /\ toProc' = IF recalled[k] THEN toProc
                         ELSE [toProc EXCEPT ![holder[k]] = Append(@, M("RECALL", k))]
            /\ UNCHANGED holder
    /\ UNCHANGED <<word, tx, rx, pc, cur, calls, prog, lq, pheld, asked, cleaned,
                   reclaims, alive, peerGot, rgot>>

\* p's agent reads RECALL k: it joins p's queue for k behind the threads
\* already there.
Recall(p, k) ==
    /\ alive[p]
    /\ toProc[p] # <<>>
    /\ Head(toProc[p]) = M("RECALL", k)
    /\ toProc' = [toProc EXCEPT ![p] = Tail(@)]
    /\ lq' = [lq EXCEPT ![p][k] = Append(@, Agent)]
    /\ UNCHANGED <<word, tx, rx, pc, cur, calls, prog, pheld, asked, holder, queue,
                   recalled, cleaned, reclaims, toMon, alive, peerGot, rgot>>

\* The agent is first in the queue and the word is not busy: it parks the
\* word, and p gives k back (RELEASE).  Threads of p still queued make p Ask
\* again.
Release(p, k) ==
    /\ alive[p]
    /\ pheld[p][k]
    /\ lq[p][k] # <<>>
    /\ Head(lq[p][k]) = Agent
    /\ WaitBusy => ~word[k].busy
    /\ word' = [word EXCEPT ![k] = Parked]
    /\ pheld' = [pheld EXCEPT ![p][k] = FALSE]
    /\ lq' = [lq EXCEPT ![p][k] = Tail(@)]
    /\ toMon' = [toMon EXCEPT ![p] = Append(@, M("RELEASE", k))]
    /\ UNCHANGED <<tx, rx, pc, cur, calls, prog, asked, holder, queue, recalled,
                   cleaned, reclaims, toProc, alive, peerGot, rgot>>

\* The messages that pass k to the first process of the queue q: GRANT, and
\* RECALL at once when more processes wait (unless ReRecall is off).
Again(q) == ReRecall /\ Len(q) > 1
PassMsgs(k, q) == <<M("GRANT", k)>> \o (IF Again(q) THEN <<M("RECALL", k)>> ELSE <<>>)

\* The monitor reads RELEASE k from p: k goes to the first process queued
\* (GRANT; RECALL too if more wait), or becomes free.
MonRelease(p, k) ==
    /\ toMon[p] # <<>>
    /\ Head(toMon[p]) = M("RELEASE", k)
    /\ toMon' = [toMon EXCEPT ![p] = Tail(@)]
    /\ LET q == queue[k] IN
       IF q = <<>>
       THEN /\ holder' = [holder EXCEPT ![k] = NoProc]
            /\ recalled' = [recalled EXCEPT ![k] = FALSE]
            /\ UNCHANGED <<queue, toProc>>
       ELSE /\ holder' = [holder EXCEPT ![k] = Head(q)]
            /\ queue' = [queue EXCEPT ![k] = Tail(q)]
            /\ recalled' = [recalled EXCEPT ![k] = Again(q)]
            /\ toProc' = [toProc EXCEPT ![Head(q)] = @ \o PassMsgs(k, q)]
    /\ UNCHANGED <<word, tx, rx, pc, cur, calls, prog, lq, pheld, asked, cleaned,
                   reclaims, alive, peerGot, rgot>>

\* p's agent reads GRANT k: p holds k (the head of its queue will Take it).
\* A word still naming a thread of another process (one that died) is parked.
Grant(p, k) ==
    /\ alive[p]
    /\ toProc[p] # <<>>
    /\ Head(toProc[p]) = M("GRANT", k)
    /\ toProc' = [toProc EXCEPT ![p] = Tail(@)]
    /\ pheld' = [pheld EXCEPT ![p][k] = TRUE]
    /\ asked' = [asked EXCEPT ![p][k] = FALSE]
    /\ word' = IF word[k].owner # NoThread /\ ProcOf[word[k].owner] # p
               THEN [word EXCEPT ![k] = Parked] ELSE word
    /\ UNCHANGED <<tx, rx, pc, cur, calls, prog, lq, holder, queue, recalled,
                   cleaned, reclaims, toMon, alive, peerGot, rgot>>

-------------------------------------------------------------------------------
(* Death *)

\* kill -9: p's threads stop where they are (a send call may be cut short;
\* its bytes so far stay in the ring); p's memory (lq, pheld, asked) is gone.
Die(p) ==
    /\ p \in Mortal
    /\ alive[p]
    /\ alive' = [alive EXCEPT ![p] = FALSE]
    /\ pc' = [t \in Threads |-> IF ProcOf[t] = p THEN "dead" ELSE pc[t]]
    /\ lq' = [lq EXCEPT ![p] = [k \in Tokens |-> <<>>]]
    /\ pheld' = [pheld EXCEPT ![p] = [k \in Tokens |-> FALSE]]
    /\ asked' = [asked EXCEPT ![p] = [k \in Tokens |-> FALSE]]
    /\ UNCHANGED <<word, tx, rx, cur, calls, prog, holder, queue, recalled, cleaned,
                   reclaims, toMon, toProc, peerGot, rgot>>

\* The monitor notices p's death (its pidfd): every token p holds is parked
\* and passed to the first process queued (GRANT, and RECALL if more wait),
\* or freed; p leaves every queue; the messages to and from p are dropped.
\* With KeepQueue off, the queue of a reclaimed token is forgotten instead.
Reclaim(p) ==
    /\ ~alive[p]
    /\ ~cleaned[p]
    /\ LET mine == {k \in Tokens : holder[k] = p}
           q(k) == Remove(queue[k], p)
           pass(k) == k \in mine /\ KeepQueue /\ q(k) # <<>>
           to(r, k) == IF pass(k) /\ Head(q(k)) = r THEN PassMsgs(k, q(k)) ELSE <<>>
           \* when it passes on both tokens to one process: send's messages first
           sent(r) == to(r, "send") \o to(r, "recv")
       IN /\ word' = [k \in Tokens |-> IF k \in mine THEN Parked ELSE word[k]]
          /\ holder' = [k \in Tokens |-> IF k \notin mine THEN holder[k]
                                         ELSE IF pass(k) THEN Head(q(k)) ELSE NoProc]
          /\ queue' = [k \in Tokens |-> IF k \notin mine THEN q(k)
                                        ELSE IF pass(k) THEN Tail(q(k)) ELSE <<>>]
          /\ recalled' = [k \in Tokens |-> IF k \in mine THEN pass(k) /\ Again(q(k))
                                           ELSE recalled[k]]
          /\ reclaims' = [reclaims EXCEPT ![p] = [k \in Tokens |->
                                            IF k \in mine THEN @[k] + 1 ELSE @[k]]]
          /\ toProc' = [r \in Procs |-> IF r = p THEN <<>> ELSE toProc[r] \o sent(r)]
    /\ toMon' = [toMon EXCEPT ![p] = <<>>]
    /\ cleaned' = [cleaned EXCEPT ![p] = TRUE]
    /\ UNCHANGED <<tx, rx, pc, cur, calls, prog, lq, pheld, asked, alive, peerGot, rgot>>

\* Every thread has made its calls or died: the model stops.  (Stuttering
\* here keeps TLC's deadlock check for real deadlocks only.)
Done ==
    /\ \A t \in Threads : pc[t] \in {"done", "dead"}
    /\ UNCHANGED vars

Next ==
    \/ \E t \in Threads :
          \/ \E k \in Tokens : Enter(t, k) \/ Queue(t, k) \/ Take(t, k) \/ Exit(t, k)
          \/ Write(t) \/ Read(t)
    \/ \E p \in Procs :
          \/ \E k \in Tokens : \/ Flag(p, k) \/ Ask(p, k) \/ MonTake(p, k)
                               \/ Recall(p, k) \/ Release(p, k) \/ MonRelease(p, k)
                               \/ Grant(p, k)
          \/ Die(p) \/ Reclaim(p)
    \/ PeerRead \/ PeerWrite
    \/ Done

\* The steps no one may put off forever: a thread in a call goes on (Run),
\* a process's agent and its waiters handle their messages and the word
\* (Serve), the monitor handles its messages and notices deaths (Monitor),
\* the peer drains and fills the rings (Peer).  Nothing forces a thread to
\* start a call (Enter, Queue) or a process to die.
Run(t) == \/ Write(t) \/ Read(t)
          \/ \E k \in Tokens : Take(t, k) \/ Exit(t, k)
Serve(p) == \E k \in Tokens : Flag(p, k) \/ Ask(p, k) \/ Recall(p, k) \/ Release(p, k)
                              \/ Grant(p, k)
Monitor == \E p \in Procs : Reclaim(p) \/ \E k \in Tokens : MonTake(p, k) \/ MonRelease(p, k)
Peer == PeerRead \/ PeerWrite

\* Weak fairness for each thread, each process, the monitor and the peer.
\* (Every behaviour of this finite model ends in a state where it only
\* stutters, so this is as strong as weak fairness of every action
\* instance on its own: it requires no fair step to be enabled there.)
Fairness ==
    /\ \A t \in Threads : WF_vars(Run(t))
    /\ \A p \in Procs : WF_vars(Serve(p))
    /\ WF_vars(Monitor)
    /\ WF_vars(Peer)

Spec == Init /\ [][Next]_vars /\ Fairness

-------------------------------------------------------------------------------
(* Safety: invariants *)

Owner(k) == word[k].owner
Live(t) == alive[ProcOf[t]]

\* At most one thread is in an operation on a token, and it is the word's
\* BUSY owner.  A named owner's process holds the token and the monitor
\* agrees, unless that process died and the monitor has not noticed yet.
OneOwner ==
    \A k \in Tokens :
       /\ \A t, u \in Threads :
             pc[t] = "op" /\ cur[t] = k /\ pc[u] = "op" /\ cur[u] = k => t = u
       /\ word[k].busy => Owner(k) # NoThread
       /\ Owner(k) # NoThread =>
             LET p == ProcOf[Owner(k)] IN
             \/ alive[p] /\ pheld[p][k] /\ holder[k] = p
             \/ ~alive[p] /\ ~cleaned[p] /\ holder[k] = p
       /\ word[k].busy /\ Live(Owner(k)) =>
             pc[Owner(k)] = "op" /\ cur[Owner(k)] = k

\* Only the BUSY owner writes (Write) or reads (Read) its ring end: every
\* live thread in an operation on k is the word's busy owner.
OnlyOwnerTouches ==
    \A t \in Threads : pc[t] = "op" /\ Live(t) =>
        word[cur[t]].owner = t /\ word[cur[t]].busy

\* At most one process holds a token, and it is the monitor's holder; with
\* no GRANT or RELEASE of it in flight, the monitor's live holder holds it.
OneHolder ==
    \A k \in Tokens :
       /\ \A p, q \in Procs : pheld[p][k] /\ pheld[q][k] => p = q
       /\ \A p \in Procs : pheld[p][k] => holder[k] = p /\ alive[p]
       /\ LET p == holder[k] IN
          p # NoProc /\ alive[p] /\ M("GRANT", k) \notin Range(toProc[p])
             /\ M("RELEASE", k) \notin Range(toMon[p])
          => pheld[p][k]

\* The local queues: each queued thread once, in its own process's queue for
\* its call's token; the agent at most once, and only where p holds k.
LocalQueues ==
    /\ \A t \in Threads : pc[t] = "queued" /\ Live(t) =>
          Count(lq[ProcOf[t]][cur[t]], LAMBDA x : x = t) = 1
    /\ \A p \in Procs, k \in Tokens :
          /\ \A i \in DOMAIN lq[p][k] : lq[p][k][i] # Agent =>
                LET t == lq[p][k][i] IN ProcOf[t] = p /\ pc[t] = "queued" /\ cur[t] = k
          /\ Count(lq[p][k], LAMBDA x : x = Agent) <= 1
          /\ Agent \in Range(lq[p][k]) => pheld[p][k]

\* The monitor's table: a queue holds each process once, never the holder,
\* only processes that asked; a free token has no queue and no recall;
\* while processes wait, the holder is being recalled.  A recall in
\* progress (RECALL in flight, the agent queued, RELEASE in flight) is the
\* holder's, and the monitor knows of it.
MonitorConsistent ==
    \A k \in Tokens :
       /\ \A i, j \in DOMAIN queue[k] : queue[k][i] = queue[k][j] => i = j
       /\ holder[k] \notin Range(queue[k])
       /\ holder[k] = NoProc => queue[k] = <<>> /\ ~recalled[k]
       /\ queue[k] # <<>> => recalled[k]
       /\ \A p \in Procs : p \in Range(queue[k]) => asked[p][k] \/ ~alive[p]
       /\ \A p \in Procs :
             (\/ M("RECALL", k) \in Range(toProc[p])
              \/ Agent \in Range(lq[p][k])
              \/ M("RELEASE", k) \in Range(toMon[p]))
             => holder[k] = p /\ recalled[k]

\* No request is lost: a process that asked for k has its TAKE in flight,
\* waits in the monitor's queue, or has been made the holder (GRANT in flight).
RequestsKept ==
    \A p \in Procs, k \in Tokens : asked[p][k] =>
       \/ M("TAKE", k) \in Range(toMon[p])
       \/ p \in Range(queue[k])
       \/ holder[k] = p /\ M("GRANT", k) \in Range(toProc[p])

\* The send stream (what the peer read, then what the ring holds): each call's
\* bytes are contiguous and in order (byte j > 1 right after byte j - 1), each
\* thread's calls in order and none twice (where a call begins, every
\* earlier byte of its thread is of an earlier call); a call stops short only
\* where it is still being written (at the end of the stream) or its thread
\* died in it; the call in progress has all the bytes its thread wrote.
SendCallsWhole ==
    LET S == peerGot \o tx
        Next1(b) == <<b[1], b[2], b[3] + 1>>
    IN
    /\ \A i \in DOMAIN S :
          /\ S[i][3] > 1 => i > 1 /\ S[i - 1] = <<S[i][1], S[i][2], S[i][3] - 1>>
          /\ S[i][3] = 1 => \A j \in 1..(i - 1) : S[j][1] = S[i][1] => S[j][2] < S[i][2]
          /\ S[i][3] < CallLen /\ (i = Len(S) \/ S[i + 1] # Next1(S[i])) =>
                /\ calls[S[i][1]] = S[i][2]
                /\ \/ pc[S[i][1]] = "dead"
                   \/ pc[S[i][1]] = "op" /\ i = Len(S)
    /\ \A t \in Threads : pc[t] = "op" /\ cur[t] = "send" =>
          Count(S, LAMBDA b : b[1] = t /\ b[2] = calls[t]) = prog[t]

\* The recv stream: every byte the peer wrote is read once, in order (the
\* readers got 1, 2, ..., the ring holds what follows); a recv call's bytes
\* are contiguous and each thread's calls in order (where a call's bytes
\* begin, every earlier byte of its thread is of an earlier call); the call
\* in an operation has the bytes it read.
RecvInOrder ==
    LET Call(b) == <<b[1], b[2]>> IN
    /\ \A i \in DOMAIN rgot : rgot[i][3] = i
    /\ \A i \in DOMAIN rx : rx[i] = Len(rgot) + i
    /\ \A i \in DOMAIN rgot : i = 1 \/ Call(rgot[i]) # Call(rgot[i - 1]) =>
          \A j \in 1..(i - 1) : rgot[j][1] = rgot[i][1] => rgot[j][2] < rgot[i][2]
    /\ \A t \in Threads : pc[t] = "op" /\ cur[t] = "recv" =>
          Count(rgot, LAMBDA b : b[1] = t /\ b[2] = calls[t]) = prog[t]

\* A dead holder's token is reclaimed exactly once: at most once per process
\* and token, only from a dead process, and once the monitor has cleaned up
\* after p nothing of its refers to p.
ReclaimedOnce ==
    \A p \in Procs :
       /\ \A k \in Tokens : reclaims[p][k] <= 1 /\ (reclaims[p][k] = 1 => cleaned[p])
       /\ cleaned[p] =>
             /\ ~alive[p]
             /\ \A k \in Tokens : holder[k] # p /\ p \notin Range(queue[k])
             /\ toMon[p] = <<>> /\ toProc[p] = <<>>

-------------------------------------------------------------------------------
(* Liveness *)

(* Each goal is written as []<>(not pending), which TLC checks without a   *)
(* tableau, several times faster than P ~> Q.  With StablePending (what is *)
(* pending stays so until its goal holds) it is the leads-to property      *)
(* named in the comment; the ~> forms follow (...LeadsTo).                 *)

\* A queued thread stays queued until it takes the token or dies; a TAKE
\* stays outstanding until granted or its process dies; a death stays, and
\* so does a clean-up.
StablePending ==
    [][ /\ \A t \in Threads : pc[t] = "queued" => pc'[t] \in {"queued", "op", "dead"}
        /\ \A p \in Procs, k \in Tokens :
              asked[p][k] => asked'[p][k] \/ pheld'[p][k] \/ ~alive'[p]
        /\ \A p \in Procs : (~alive[p] => ~alive'[p]) /\ (cleaned[p] => cleaned'[p])
      ]_vars

\* No starvation: every queued thread takes the token (or its process dies):
\* pc[t] = "queued" ~> pc[t] \in {"op", "dead"}.
NoStarvation == \A t \in Threads : []<>(pc[t] # "queued")

\* Every TAKE is granted (unless the asking process dies):
\* asked[p][k] ~> pheld[p][k] \/ ~alive[p].
TakeGranted == \A p \in Procs, k \in Tokens : []<>~asked[p][k]

\* A dead holder's tokens are reclaimed, once the monitor notices the death:
\* ~alive[p] ~> cleaned[p].
DeadReclaimed == \A p \in Procs : []<>(alive[p] \/ cleaned[p])

NoStarvationLeadsTo == \A t \in Threads : pc[t] = "queued" ~> pc[t] \in {"op", "dead"}
TakeGrantedLeadsTo ==
    \A p \in Procs, k \in Tokens : asked[p][k] ~> (pheld[p][k] \/ ~alive[p])
DeadReclaimedLeadsTo == \A p \in Procs : ~alive[p] ~> cleaned[p]
===============================================================================
