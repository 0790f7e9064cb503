-------------------------------- MODULE Fork --------------------------------
(***************************************************************************)
(* fork() with user-space sockets (after SocksDirect, SIGCOMM 2019): the   *)
(* contract of impl/fork, of the monitor's holder table and hold pipes,    *)
(* and of the send-token hand-over between a parent and its children.      *)
(*                                                                         *)
(* Processes.  Root is alive at the start and holds every socket end of    *)
(* Socks, one fd each (the lowest fds).  A live process Forks an unborn    *)
(* one: the child gets a copy of the parent's fd table (Linux: both hold   *)
(* every end; the rings are shared memory, one per end).  A process Dups   *)
(* an fd (the lowest free fd gets the same end), Closes an fd, or, if      *)
(* Mortal, Dies (kill -9: the kernel closes its fds).  Holders(s), the     *)
(* live processes with an fd of s, is the kernel's count of the end's      *)
(* holders: the hold pipe, whose read end the monitor watches (POLLHUP     *)
(* once no process holds a copy of its write end).                         *)
(*                                                                         *)
(* Per-process resources.  The monitor channel, the token agent and an     *)
(* RDMA queue pair belong to one process; res[p] is whose resource p's     *)
(* memory refers to.  A child's starts as NoProc and is made on demand     *)
(* (CreateResource).                                                       *)
(*                                                                         *)
(* The monitor.  known[s] holds the processes the monitor lists as         *)
(* holders of s.  A child's ends are pending until its FORKED (sent on its *)
(* own channel, with its copy of the hold pipe's write end as proof)       *)
(* registers it (Register); FORKED precedes every later message of the     *)
(* child, so a pending end cannot be closed or asked for.  A process that  *)
(* closes its last copy of s sends CLOSE: the monitor drops it from        *)
(* known[s] and from s's token queue, and frees the token if it held it;   *)
(* if the closer was the end's last holder (its hold pipe says so) it      *)
(* closes the tx ring: eof, the peer sees EOF after the bytes in the ring. *)
(* The monitor Reaps a dead process (drops it everywhere, frees a token it *)
(* held and resets the busy word of a send it died in), and MonCloses an   *)
(* end that it lists no holder of and whose hold pipe reports POLLHUP      *)
(* (Holders(s) = {}): the state goes, and the rings are closed if no       *)
(* closer did (a last holder that died).                                   *)
(*                                                                         *)
(* The send token (TokenSharing, abstracted).  tok[s] is the monitor's     *)
(* holder of s's send token, pheld[p] what p believes it holds.  A process *)
(* that holds s and has a send call to make Asks (its channel joins        *)
(* queue[s]); Handover gives the token to the head of the queue once no    *)
(* send call is under way (RECALL, RELEASE, GRANT in one step).  The       *)
(* holder SendStarts a call, Writes CallLen bytes into the ring, SendEnds. *)
(* The peer reads the ring (PeerRead) into peerGot.  A byte is <<p, c, j>>: *)
(* byte j of p's send call c on that end.                                  *)
(*                                                                         *)
(* Three switches turn on known-bad variants that TLC must reject:         *)
(*   CountHolders   = FALSE  a closer closes the rings when it closes its  *)
(*                           own last copy, not when no process holds the  *)
(*                           end (no hold pipe): the peer sees EOF while a *)
(*                           child still holds the socket;                 *)
(*   FreshResources = FALSE  a child keeps the parent's per-process        *)
(*                           resources (its monitor channel, agent, queue  *)
(*                           pair) instead of making its own;              *)
(*   TokenStays     = FALSE  a child copies the parent's belief that it    *)
(*                           holds send tokens: two processes send.        *)
(***************************************************************************)
EXTENDS Naturals, Sequences, FiniteSets

CONSTANTS
    Procs,          \* process names; Root is alive at start, the others unborn
    Root,           \* the first process: it holds every end of Socks at start
    Fds,            \* the fd numbers of every process's table (finite naturals)
    Socks,          \* the socket ends (Root holds each at start, one fd each)
    CallLen,        \* bytes per send call
    Calls,          \* send calls each process makes on each end
    Mortal,         \* the processes that may be killed (Die)
    CountHolders,   \* TRUE: close the rings only when no process holds the end (correct)
    FreshResources, \* TRUE: a child's per-process resources start as none (correct)
    TokenStays      \* TRUE: a child holds no send token at fork (correct)

Free == "Free"      \* an unused fd
NoProc == "NoProc"  \* no process: no parent, no resource, no token holder, no sender

ASSUME /\ Procs # {} /\ Root \in Procs
       /\ Fds # {} /\ Fds \subseteq Nat /\ IsFiniteSet(Fds)
       /\ Socks # {} /\ Cardinality(Socks) <= Cardinality(Fds)
       /\ {Free, NoProc} \cap (Procs \cup Socks) = {}
       /\ Procs \cap Socks = {}
       /\ CallLen \in Nat \ {0}
       /\ Calls \in Nat
       /\ Mortal \subseteq Procs
       /\ \A b \in {CountHolders, FreshResources, TokenStays} : b \in BOOLEAN

VARIABLES
    born,       \* the processes made so far (Root, and the children forked)
    alive,      \* the processes that run
    parent,     \* parent[p]: the process that forked p, or NoProc
    fdt,        \* fdt[p][f]: the end fd f of p refers to, or Free
    res,        \* res[p]: whose per-process resource p's memory refers to
    pending,    \* pending[p]: ends p holds that the monitor has not registered (FORKED)
    known,      \* known[s]: the monitor's holders of s
    monClosed,  \* monClosed[s]: the monitor closed s (its state is gone)
    eof,        \* eof[s]: s's tx ring is closed (the peer sees EOF after its bytes)
    pheld,      \* pheld[p]: the ends whose send token p believes it holds
    tok,        \* tok[s]: the monitor's holder of s's send token, or NoProc
    queue,      \* queue[s]: the processes waiting for s's send token, FIFO
    busy,       \* busy[s]: the process inside a send call on s, or NoProc
    calls,      \* calls[p][s]: the send calls p started on s
    ring,       \* ring[s]: the bytes in s's tx ring (shared memory), oldest first
    peerGot     \* peerGot[s]: the bytes the peer has read from s, in order

vars == <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
          queue, busy, calls, ring, peerGot>>

-------------------------------------------------------------------------------
(* Definitions *)

Bytes == Procs \X (1..Calls) \X (1..CallLen)
ProcOrNone == Procs \cup {NoProc}
Range(q) == {q[i] : i \in DOMAIN q}
Remove(q, x) == LET Keep(y) == y # x IN SelectSeq(q, Keep)

\* The kernel's count: the live processes with an fd of s (the hold pipe).
Holders(s) == {p \in alive : \E f \in Fds : fdt[p][f] = s}
\* The ends p holds.
Held(p) == {fdt[p][f] : f \in Fds} \ {Free}
\* The lowest free fd of p (only used where one is free).
LowestFree(p) == CHOOSE f \in Fds : fdt[p][f] = Free /\ \A g \in Fds : g < f => fdt[p][g] # Free

\* The send stream of s: what the peer read, then what the ring holds.
Stream(s) == peerGot[s] \o ring[s]
\* The bytes p's current call on s has written so far.
Written(p, s) == LET Mine(b) == b[1] = p /\ b[2] = calls[p][s]
                 IN Len(SelectSeq(Stream(s), Mine))

\* The monitor lists p somewhere: as a holder, a waiter, or a token holder.
InMonitor(p) == \E s \in Socks : p \in known[s] \/ p \in Range(queue[s]) \/ tok[s] = p

\* Root's fds at the start: the |Socks| lowest fds, one end each.
InitFds == {f \in Fds : Cardinality({g \in Fds : g < f}) < Cardinality(Socks)}
InitTables == {b \in [InitFds -> Socks] : \A s \in Socks : \E f \in InitFds : b[f] = s}
NoFds == [f \in Fds |-> Free]

TypeOK ==
    /\ born \subseteq Procs /\ alive \subseteq born
    /\ parent \in [Procs -> ProcOrNone]
    /\ fdt \in [Procs -> [Fds -> Socks \cup {Free}]]
    /\ res \in [Procs -> ProcOrNone]
    /\ pending \in [Procs -> SUBSET Socks]
    /\ known \in [Socks -> SUBSET Procs]
    /\ monClosed \in [Socks -> BOOLEAN]
    /\ eof \in [Socks -> BOOLEAN]
    /\ pheld \in [Procs -> SUBSET Socks]
    /\ tok \in [Socks -> ProcOrNone]
    /\ queue \in [Socks -> Seq(Procs)]
    /\ busy \in [Socks -> ProcOrNone]
    /\ calls \in [Procs -> [Socks -> 0..Calls]]
    /\ ring \in [Socks -> Seq(Bytes)]
    /\ peerGot \in [Socks -> Seq(Bytes)]

Init ==
    /\ born = {Root}
    /\ alive = {Root}
    /\ parent = [p \in Procs |-> NoProc]
    /\ \E b \in InitTables :
          fdt = [p \in Procs |-> IF p = Root
                                 THEN [f \in Fds |-> IF f \in InitFds THEN b[f] ELSE Free]
                                 ELSE NoFds]
    \* Root made its resources when it opened the ends.
    /\ res = [p \in Procs |-> IF p = Root THEN Root ELSE NoProc]
    /\ pending = [p \in Procs |-> {}]
    /\ known = [s \in Socks |-> {Root}]
    /\ monClosed = [s \in Socks |-> FALSE]
    /\ eof = [s \in Socks |-> FALSE]
    /\ pheld = [p \in Procs |-> IF p = Root THEN Socks ELSE {}]
    /\ tok = [s \in Socks |-> Root]
    /\ queue = [s \in Socks |-> <<>>]
    /\ busy = [s \in Socks |-> NoProc]
    /\ calls = [p \in Procs |-> [s \in Socks |-> 0]]
    /\ ring = [s \in Socks |-> <<>>]
    /\ peerGot = [s \in Socks |-> <<>>]

-------------------------------------------------------------------------------
(* Processes: fork, the fd table, death *)

\* p forks c: c gets p's fd table; the monitor learns of c's ends only by
\* c's FORKED (pending).  A send call p is in does not continue in c.
Fork(p, c) ==
    /\ p \in alive
    /\ c \in Procs \ born
    /\ born' = born \cup {c}
    /\ alive' = alive \cup {c}
    /\ parent' = [parent EXCEPT ![c] = p]
    /\ fdt' = [fdt EXCEPT ![c] = fdt[p]]
    /\ pending' = [pending EXCEPT ![c] = Held(p)]
    /\ res' = [res EXCEPT ![c] = IF FreshResources THEN NoProc ELSE res[p]]
    /\ pheld' = [pheld EXCEPT ![c] = IF TokenStays THEN {} ELSE pheld[p]]
    /\ calls' = [calls EXCEPT ![c] = [s \in Socks |-> 0]]
    /\ UNCHANGED <<known, monClosed, eof, tok, queue, busy, ring, peerGot>>

\* p makes its own per-process resource, on demand: the library makes it on
\* first use (a FORKED, a TAKE, a CLOSE), and only a process that holds an
\* end has a use for it.
CreateResource(p) ==
    /\ p \in alive
    /\ res[p] # p
    /\ Held(p) # {}
    /\ res' = [res EXCEPT ![p] = p]
    /\ UNCHANGED <<born, alive, parent, fdt, pending, known, monClosed, eof, pheld, tok,
                   queue, busy, calls, ring, peerGot>>

\* The monitor reads c's FORKED (on c's channel; it may arrive after c
\* died): c joins the holders of its pending ends, unless the monitor has
\* closed one already (c died and no one else held it).
Register(c) ==
    /\ pending[c] # {}
    /\ res[c] # NoProc
    /\ known' = [s \in Socks |-> IF s \in pending[c] /\ ~monClosed[s]
                                 THEN known[s] \cup {c} ELSE known[s]]
    /\ pending' = [pending EXCEPT ![c] = {}]
    /\ UNCHANGED <<born, alive, parent, fdt, res, monClosed, eof, pheld, tok, queue, busy,
                   calls, ring, peerGot>>

\* p duplicates fd f: the lowest free fd gets the same end.
Dup(p, f) ==
    /\ p \in alive
    /\ fdt[p][f] # Free
    /\ \E g \in Fds : fdt[p][g] = Free
    /\ fdt' = [fdt EXCEPT ![p][LowestFree(p)] = fdt[p][f]]
    /\ UNCHANGED <<born, alive, parent, res, pending, known, monClosed, eof, pheld, tok,
                   queue, busy, calls, ring, peerGot>>

\* p closes fd f, not inside a send call on its end.  Closing the last copy
\* tells the monitor (CLOSE, through p's resource); the closer closes the
\* rings if it was the end's last holder (CountHolders: the hold pipe).
Close(p, f) ==
    LET s == fdt[p][f]
        last == \A g \in Fds \ {f} : fdt[p][g] # s
        me == res[p]
    IN
    /\ p \in alive
    /\ s # Free
    /\ s \notin pending[p]
    /\ busy[s] # p
    /\ fdt' = [fdt EXCEPT ![p][f] = Free]
    /\ IF last
       THEN /\ me # NoProc
            /\ eof' = [eof EXCEPT ![s] = IF CountHolders THEN @ \/ Holders(s) = {p}
                                         ELSE TRUE]
            /\ known' = [known EXCEPT ![s] = @ \ {me}]
            /\ queue' = [queue EXCEPT ![s] = Remove(@, me)]
            /\ tok' = [tok EXCEPT ![s] = IF @ = me THEN NoProc ELSE @]
            /\ pheld' = [pheld EXCEPT ![p] = @ \ {s}]
       ELSE UNCHANGED <<eof, known, queue, tok, pheld>>
    /\ UNCHANGED <<born, alive, parent, res, pending, monClosed, busy, calls, ring,
                   peerGot>>

\* kill -9: the kernel closes p's fds (its hold pipe copies go too).  The
\* monitor notices later (Reap, MonClose).
Die(p) ==
    /\ p \in Mortal \cap alive
    /\ alive' = alive \ {p}
    /\ fdt' = [fdt EXCEPT ![p] = NoFds]
    /\ UNCHANGED <<born, parent, res, pending, known, monClosed, eof, pheld, tok, queue,
                   busy, calls, ring, peerGot>>

-------------------------------------------------------------------------------
(* The send token and send calls *)

\* p has a send call to make on s and does not hold the token: it asks the
\* monitor (TAKE, through its resource).
Ask(p, s) ==
    /\ p \in Holders(s)
    /\ s \notin pending[p]
    /\ calls[p][s] < Calls
    /\ s \notin pheld[p]
    /\ res[p] # NoProc
    /\ res[p] \notin Range(queue[s])
    /\ queue' = [queue EXCEPT ![s] = Append(@, res[p])]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
                   busy, calls, ring, peerGot>>

\* The monitor passes s's token to the first process queued, once no send
\* call is under way (RECALL, RELEASE and GRANT in one step); a dead
\* holder's token waits for Reap.
Handover(s) ==
    /\ queue[s] # <<>>
    /\ busy[s] = NoProc
    /\ tok[s] = NoProc \/ tok[s] \in alive
    /\ LET h == Head(queue[s]) IN
       /\ tok' = [tok EXCEPT ![s] = h]
       /\ pheld' = [p \in Procs |-> IF p = h THEN pheld[p] \cup {s}
                                    ELSE IF p = tok[s] THEN pheld[p] \ {s}
                                    ELSE pheld[p]]
    /\ queue' = [queue EXCEPT ![s] = Tail(@)]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, busy,
                   calls, ring, peerGot>>

\* p, holding s's token, starts a send call on s.
SendStart(p, s) ==
    /\ p \in Holders(s)
    /\ s \in pheld[p]
    /\ tok[s] = p
    /\ busy[s] = NoProc
    /\ calls[p][s] < Calls
    /\ busy' = [busy EXCEPT ![s] = p]
    /\ calls' = [calls EXCEPT ![p][s] = @ + 1]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
                   queue, ring, peerGot>>

\* p's send call writes its next byte into s's ring.
Write(p, s) ==
    /\ busy[s] = p
    /\ p \in alive
    /\ Written(p, s) < CallLen
    /\ ring' = [ring EXCEPT ![s] = Append(@, <<p, calls[p][s], Written(p, s) + 1>>)]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
                   queue, busy, calls, peerGot>>

\* p's send call has written its CallLen bytes: it ends.
SendEnd(p, s) ==
    /\ busy[s] = p
    /\ p \in alive
    /\ Written(p, s) = CallLen
    /\ busy' = [busy EXCEPT ![s] = NoProc]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
                   queue, calls, ring, peerGot>>

-------------------------------------------------------------------------------
(* The monitor and the peer *)

\* The monitor notices p's death (its channel closes, after any FORKED on
\* it): p leaves every holder list and queue; a token p held is freed and
\* the busy word of a send p died in is reset.
Reap(p) ==
    /\ p \in born \ alive
    /\ InMonitor(p)
    /\ pending[p] = {}
    /\ known' = [s \in Socks |-> known[s] \ {p}]
    /\ queue' = [s \in Socks |-> Remove(queue[s], p)]
    /\ tok' = [s \in Socks |-> IF tok[s] = p THEN NoProc ELSE tok[s]]
    /\ busy' = [s \in Socks |-> IF busy[s] = p THEN NoProc ELSE busy[s]]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, monClosed, eof, pheld, calls, ring,
                   peerGot>>

\* The monitor lists no holder of s and s's hold pipe reports POLLHUP: it
\* drops s and closes its rings (a no-op if a closer did).  It does not wait
\* for FORKED messages: it cannot know of them, and a child that died before
\* making its channel never sends one (Register then skips the closed end).
MonClose(s) ==
    /\ ~monClosed[s]
    /\ known[s] = {}
    /\ Holders(s) = {}
    /\ monClosed' = [monClosed EXCEPT ![s] = TRUE]
    /\ eof' = [eof EXCEPT ![s] = TRUE]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, pheld, tok, queue, busy,
                   calls, ring, peerGot>>

\* The peer reads the oldest byte of s's ring.
PeerRead(s) ==
    /\ ring[s] # <<>>
    /\ peerGot' = [peerGot EXCEPT ![s] = Append(@, Head(ring[s]))]
    /\ ring' = [ring EXCEPT ![s] = Tail(@)]
    /\ UNCHANGED <<born, alive, parent, fdt, res, pending, known, monClosed, eof, pheld, tok,
                   queue, busy, calls>>

\* Every process is born (or none is left to fork) and no live process holds
\* an end: the model stops.  (Stuttering here keeps TLC's deadlock check for
\* real deadlocks only.)
Done ==
    /\ born = Procs \/ alive = {}
    /\ \A p \in alive : Held(p) = {}
    /\ UNCHANGED vars

Next ==
    \/ \E p \in Procs :
          \/ \E c \in Procs : Fork(p, c)
          \/ CreateResource(p) \/ Register(p) \/ Die(p) \/ Reap(p)
          \/ \E f \in Fds : Dup(p, f) \/ Close(p, f)
          \/ \E s \in Socks : Ask(p, s) \/ SendStart(p, s) \/ Write(p, s) \/ SendEnd(p, s)
    \/ \E s \in Socks : Handover(s) \/ MonClose(s) \/ PeerRead(s)
    \/ Done

\* Weak fairness on every step of the library, the monitor and the peer,
\* instance by instance; none on what a program chooses to do (Fork, Dup,
\* Close) or on death.  SendStart is strongly fair: Handover may pass the
\* token on before its holder starts its call (the model has no RECALL
\* that waits for the holder's waiting call), so a process that gets the
\* token again and again must eventually use it.
Fairness ==
    /\ \A p \in Procs :
          /\ WF_vars(CreateResource(p)) /\ WF_vars(Register(p)) /\ WF_vars(Reap(p))
          /\ \A s \in Socks : /\ WF_vars(Ask(p, s)) /\ SF_vars(SendStart(p, s))
                              /\ WF_vars(Write(p, s)) /\ WF_vars(SendEnd(p, s))
    /\ \A s \in Socks : WF_vars(Handover(s)) /\ WF_vars(MonClose(s)) /\ WF_vars(PeerRead(s))

Spec == Init /\ [][Next]_vars /\ Fairness

-------------------------------------------------------------------------------
(* Safety *)

\* A Fork gives the child exactly its parent's table (a property of steps:
\* whenever a process is born, its table is its parent's before the step).
ForkCopiesTable ==
    [][\A c \in Procs : c \notin born /\ c \in born' =>
          /\ parent'[c] \in alive
          /\ fdt'[c] = fdt[parent'[c]]]_vars

\* A Dup takes the lowest free fd: an fd that becomes used in a process that
\* existed before the step had every lower fd in use.
LowestFd ==
    [][\A p \in born, f \in Fds : fdt[p][f] = Free /\ fdt'[p][f] # Free =>
          \A g \in Fds : g < f => fdt[p][g] # Free]_vars

\* No data lost: the peer sees EOF only when no process holds the end (so
\* nothing can be written after it).
PeerClosedOnlyWhenUnheld == \A s \in Socks : eof[s] => Holders(s) = {}

\* The monitor lists every live holder whose FORKED it has read.
MonitorKnowsHolders ==
    \A s \in Socks : \A p \in Holders(s) : s \notin pending[p] => p \in known[s]

\* ... and no one else, but for the dead it has not reaped yet.
KnownAreHolders == \A s \in Socks : known[s] \subseteq Holders(s) \cup (born \ alive)

\* A per-process resource is used only by its owner: a live process's
\* memory refers to its own resource or to none.
ResourceOwned == \A p \in alive : res[p] \in {NoProc, p}

\* At most one live process believes it holds s's send token, and the
\* monitor agrees.
OneTokenHolder ==
    \A s \in Socks :
       /\ \A p, q \in alive : s \in pheld[p] /\ s \in pheld[q] => p = q
       /\ \A p \in alive : s \in pheld[p] => tok[s] = p

\* Only the token holder writes: a send call under way is the token
\* holder's, it has written at most its CallLen bytes, and every byte in
\* the stream is of a call its process started.
OnlySenderWrites ==
    \A s \in Socks :
       /\ busy[s] # NoProc => tok[s] = busy[s] /\ calls[busy[s]][s] > 0
       /\ busy[s] \in alive => s \in pheld[busy[s]]
       /\ \A i \in DOMAIN Stream(s) : Stream(s)[i][2] <= calls[Stream(s)[i][1]][s]

\* Each call's bytes are contiguous and in order in the stream (byte j > 1
\* right after byte j - 1), each process's calls in order and none twice;
\* a call stops short only while it is being written (at the end of the
\* stream) or where its process died in it.
SendCallsWhole ==
    \A s \in Socks :
       LET S == Stream(s)
           Next1(b) == <<b[1], b[2], b[3] + 1>>
       IN
       \A i \in DOMAIN S :
          /\ S[i][3] > 1 => i > 1 /\ S[i - 1] = <<S[i][1], S[i][2], S[i][3] - 1>>
          /\ S[i][3] = 1 => \A j \in 1..(i - 1) : S[j][1] = S[i][1] => S[j][2] < S[i][2]
          /\ S[i][3] < CallLen /\ (i = Len(S) \/ S[i + 1] # Next1(S[i])) =>
                /\ calls[S[i][1]][s] = S[i][2]
                /\ \/ S[i][1] \notin alive
                   \/ busy[s] = S[i][1] /\ i = Len(S)

\* Once the monitor has closed an end, the peer sees EOF and no one holds it.
MonitorClosedIsClosed == \A s \in Socks : monClosed[s] => eof[s] /\ Holders(s) = {}

-------------------------------------------------------------------------------
(* Liveness *)

(* Each goal is written as []<>(not pending), which TLC checks without a   *)
(* tableau, several times faster than P ~> Q; under Spec each is           *)
(* equivalent to the leads-to property named in its comment (the ~> forms  *)
(* follow, ...LeadsTo).                                                    *)

\* A child's first send on an inherited end is pending: it holds the end
\* and has not finished a send call on it.
FirstSendPending(p, s) ==
    /\ Calls > 0 /\ p # Root /\ p \in Holders(s)
    /\ calls[p][s] = 0 \/ busy[s] = p

\* A child that holds s and has made no send call on it eventually starts
\* and ends one, or no longer holds s (closed it or died):
\* p \in Holders(s) /\ calls[p][s] = 0 ~> p \notin Holders(s) \/ (calls[p][s] > 0 /\ busy[s] # p).
FirstSendSucceeds == \A p \in Procs, s \in Socks : []<>~FirstSendPending(p, s)

\* A dead process eventually leaves the monitor (a FORKED read after its
\* death brings it back once, and it leaves again):
\* p \in born \ alive /\ InMonitor(p) ~> ~InMonitor(p).
DeadReaped == \A p \in Procs : []<>~(p \in born \ alive /\ InMonitor(p))

\* An end that no process holds is eventually closed by the monitor
\* (Holders(s) = {} ~> monClosed[s]; both stay once true).
UnheldCloses == \A s \in Socks : []<>(Holders(s) # {} \/ monClosed[s])

FirstSendSucceedsLeadsTo ==
    \A p \in Procs \ {Root}, s \in Socks :
       Calls > 0 /\ p \in Holders(s) /\ calls[p][s] = 0
          ~> p \notin Holders(s) \/ (calls[p][s] > 0 /\ busy[s] # p)
DeadReapedLeadsTo == \A p \in Procs : p \in born \ alive /\ InMonitor(p) ~> ~InMonitor(p)
UnheldClosesLeadsTo == \A s \in Socks : Holders(s) = {} ~> monClosed[s]
===============================================================================
