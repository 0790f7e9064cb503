------------------------------- MODULE Connect -------------------------------
(***************************************************************************)
(* Connection set-up through SocksDirect's monitor, on one host.           *)
(*                                                                         *)
(* A trusted monitor process owns the tables; client processes ask it to   *)
(* listen on an address, to connect to one, to accept, and they close     *)
(* their ends.  A process can die at any time (kill -9); the monitor       *)
(* notices later (its pidfd becomes readable) and cleans up after it.  The *)
(* operator can reload the access-control rules at any time.               *)
(*                                                                         *)
(* This module is the contract of impl/monitor: the monitor's refinement   *)
(* mapping produces exactly these variables, and each monitor operation is *)
(* one of these actions.                                                   *)
(*                                                                         *)
(* Representation.  One model value, None, stands for "nothing here":      *)
(*   listeners[a] = None   no SocksDirect listener at address a;           *)
(*   conns[c]     = None   connection id c is not in the monitor's table   *)
(*                         (never given out, or both sides closed);        *)
(*   req[p]       = None   p has no connect request outstanding.           *)
(* A reply is a record [kind, conn] whose conn is 0 unless kind = "ring".  *)
(*                                                                         *)
(* The ACL is a set of allowed <<direction, proc, addr>> triples; it is    *)
(* what the monitor's ordered TOML rules evaluate to for these processes   *)
(* and addresses, so "first match wins" is already resolved here.          *)
(*                                                                         *)
(* Two switches turn on known-bad variants that TLC must reject:           *)
(*   CleanupQueues = FALSE  Unlisten and Cleanup drop a listener but       *)
(*                          forget its queued (not yet accepted) conns:    *)
(*                          they stay "queued" at no listener, forever.    *)
(*   CheckAclFirst = FALSE  the monitor checks the ACL only when it sets   *)
(*                          up a ring; a connect that falls back to the    *)
(*                          kernel (no listener, owner dead, backlog full) *)
(*                          is not checked, and the kernel socket it       *)
(*                          reaches may be the very listener's (listen()   *)
(*                          binds a real kernel socket): an ACL bypass.    *)
(***************************************************************************)
EXTENDS Naturals, Sequences, FiniteSets

CONSTANTS
    Procs,          \* the client processes (names)
    Addrs,          \* the listen addresses (names)
    Backlog,        \* most connections queued, not yet accepted, per listener
    MaxConns,       \* connection ids are 1..MaxConns (bounds the model)
    Acls,           \* the ACLs the operator may load: sets of allowed triples
    InitAcl,        \* the ACL in force at start
    None,           \* "nothing here" (a model value; see above)
    CleanupQueues,  \* TRUE: a listener that goes away resets its queue (correct)
    CheckAclFirst   \* TRUE: the ACL is checked before anything else (correct)

Directions == {"listen", "connect"}
Rules == Directions \X Procs \X Addrs

ASSUME /\ Procs # {} /\ Addrs # {}
       /\ Backlog \in Nat \ {0}
       /\ MaxConns \in Nat
       /\ Acls \subseteq SUBSET Rules
       /\ InitAcl \in Acls
       /\ None \notin Procs \cup Addrs
       /\ CleanupQueues \in BOOLEAN
       /\ CheckAclFirst \in BOOLEAN

VARIABLES
    alive,      \* alive[p]: process p exists
    acl,        \* the rules in force: an element of Acls
    listeners,  \* listeners[a]: [owner, queue] or None; queue = accepted-next first
    conns,      \* conns[c]: [client, server, addr, cstate, sstate] or None
    req,        \* req[p]: the address p asked to connect to, not yet answered, or None
    reply,      \* reply[p]: the monitor's answer to p's last request
    cleaned,    \* cleaned[p]: the monitor has cleaned up after p's death
    nextId      \* the next connection id the monitor gives out

vars == <<alive, acl, listeners, conns, req, reply, cleaned, nextId>>

Ids == 1..MaxConns
NoConn == 0                         \* the conn field of a reply that is not "ring"
Listener == [owner : Procs, queue : Seq(Ids)]
Conn == [client : Procs, server : Procs, addr : Addrs,
         cstate : {"open", "closed"}, sstate : {"queued", "open", "closed"}]
Reply == [kind : {"none", "kernel", "refused"}, conn : {NoConn}]
           \cup [kind : {"ring"}, conn : Ids]
NoReply == [kind |-> "none", conn |-> NoConn]

Range(s) == {s[i] : i \in DOMAIN s}
Allowed(dir, p, a) == <<dir, p, a>> \in acl
Owns(p, a) == listeners[a] # None /\ listeners[a].owner = p
Outstanding == Cardinality({q \in Procs : req[q] # None})
Queued(c) == conns[c] # None /\ conns[c].sstate = "queued"

\* The table cs without the conns whose both sides are closed.
Drop(cs) == [c \in Ids |-> IF cs[c] # None /\ cs[c].cstate = "closed"
                                          /\ cs[c].sstate = "closed"
                           THEN None ELSE cs[c]]

\* The table with the server side of every conn in S reset (closed).
Reset(cs, S) == [c \in Ids |-> IF c \in S THEN [cs[c] EXCEPT !.sstate = "closed"]
                                          ELSE cs[c]]

\* The conns queued at the listeners on the addresses in A.
QueuedAt(A) == UNION {Range(listeners[a].queue) : a \in A}

TypeOK ==
    /\ alive \in [Procs -> BOOLEAN]
    /\ acl \in Acls
    /\ listeners \in [Addrs -> Listener \cup {None}]
    /\ conns \in [Ids -> Conn \cup {None}]
    /\ req \in [Procs -> Addrs \cup {None}]
    /\ reply \in [Procs -> Reply]
    /\ cleaned \in [Procs -> BOOLEAN]
    /\ nextId \in 1..(MaxConns + 1)

Init ==
    /\ alive = [p \in Procs |-> TRUE]
    /\ acl = InitAcl
    /\ listeners = [a \in Addrs |-> None]
    /\ conns = [c \in Ids |-> None]
    /\ req = [p \in Procs |-> None]
    /\ reply = [p \in Procs |-> NoReply]
    /\ cleaned = [p \in Procs |-> FALSE]
    /\ nextId = 1

-------------------------------------------------------------------------------
(* Listeners *)

\* p listens on a.  The kernel owns ports: a second listen on a is the
\* kernel's EADDRINUSE, so it is not a step of the monitor at all.
Listen(p, a) ==
    /\ alive[p]
    /\ listeners[a] = None
    /\ Allowed("listen", p, a)
    /\ listeners' = [listeners EXCEPT ![a] = [owner |-> p, queue |-> <<>>]]
    /\ UNCHANGED <<alive, acl, conns, req, reply, cleaned, nextId>>

\* The same, but the ACL denies it: the caller gets PermissionError and the
\* monitor's tables do not change (its counters are not modelled).
ListenDenied(p, a) ==
    /\ alive[p]
    /\ listeners[a] = None
    /\ ~Allowed("listen", p, a)
    /\ UNCHANGED vars

\* The owner closes its listener: every conn queued there (not yet accepted)
\* is reset, and one whose client has closed too leaves the table.
Unlisten(p, a) ==
    /\ alive[p]
    /\ Owns(p, a)
    /\ listeners' = [listeners EXCEPT ![a] = None]
    /\ conns' = IF CleanupQueues THEN Drop(Reset(conns, QueuedAt({a}))) ELSE conns
    /\ UNCHANGED <<alive, acl, req, reply, cleaned, nextId>>

-------------------------------------------------------------------------------
(* Connecting *)

\* p asks the monitor to connect to a; it has read its previous reply.  The
\* guard on ids bounds the model: each outstanding request may need one.
Connect(p, a) ==
    /\ alive[p]
    /\ req[p] = None
    /\ nextId + Outstanding <= MaxConns
    /\ req' = [req EXCEPT ![p] = a]
    /\ reply' = [reply EXCEPT ![p] = NoReply]
    /\ UNCHANGED <<alive, acl, listeners, conns, cleaned, nextId>>

\* The monitor answers p's request with "refused" or "kernel".
Answer(p, kind) ==
    /\ reply' = [reply EXCEPT ![p] = [kind |-> kind, conn |-> NoConn]]
    /\ req' = [req EXCEPT ![p] = None]
    /\ UNCHANGED <<alive, acl, listeners, conns, cleaned, nextId>>

\* The monitor sets up a ring from p to the listener at a: a new conn, queued.
Ring(p, a) ==
    /\ conns' = [conns EXCEPT ![nextId] =
                    [client |-> p, server |-> listeners[a].owner, addr |-> a,
                     cstate |-> "open", sstate |-> "queued"]]
    /\ listeners' = [listeners EXCEPT ![a].queue = Append(@, nextId)]
    /\ reply' = [reply EXCEPT ![p] = [kind |-> "ring", conn |-> nextId]]
    /\ req' = [req EXCEPT ![p] = None]
    /\ nextId' = nextId + 1
    /\ UNCHANGED <<alive, acl, cleaned>>

\* A listener at a that can take one more connection now.
HasRoom(a) ==
    /\ listeners[a] # None
    /\ alive[listeners[a].owner]
    /\ Len(listeners[a].queue) < Backlog

\* The monitor answers p's request, in one step.  The ACL comes first, so no
\* connection, ring or kernel, bypasses it.  p may have died already: the
\* monitor has not noticed, and Cleanup will close what it set up for p.
HandleConnect(p) ==
    /\ req[p] # None
    /\ LET a == req[p] IN
       IF CheckAclFirst
       THEN IF ~Allowed("connect", p, a) THEN Answer(p, "refused")
            ELSE IF HasRoom(a) THEN Ring(p, a)
            ELSE Answer(p, "kernel")
       ELSE \* the bad variant: the ACL only guards the ring path
            IF HasRoom(a)
            THEN IF Allowed("connect", p, a) THEN Ring(p, a) ELSE Answer(p, "refused")
            ELSE Answer(p, "kernel")

\* The owner of the listener at a accepts the oldest queued conn.
Accept(p, a) ==
    /\ alive[p]
    /\ Owns(p, a)
    /\ listeners[a].queue # <<>>
    /\ LET c == Head(listeners[a].queue) IN
       conns' = [conns EXCEPT ![c].sstate = "open"]
    /\ listeners' = [listeners EXCEPT ![a].queue = Tail(@)]
    /\ UNCHANGED <<alive, acl, req, reply, cleaned, nextId>>

\* p closes its open end of c: the client end or the server end (a process
\* connected to its own listener holds both).  A conn closed at both ends
\* leaves the table.
Close(p, c) ==
    /\ alive[p]
    /\ conns[c] # None
    /\ \/ /\ conns[c].client = p /\ conns[c].cstate = "open"
          /\ conns' = Drop([conns EXCEPT ![c].cstate = "closed"])
       \/ /\ conns[c].server = p /\ conns[c].sstate = "open"
          /\ conns' = Drop([conns EXCEPT ![c].sstate = "closed"])
    /\ UNCHANGED <<alive, acl, listeners, req, reply, cleaned, nextId>>

-------------------------------------------------------------------------------
(* Process death and the operator *)

\* kill -9: the kernel closes p's fds, the monitor has not noticed yet.
Die(p) ==
    /\ alive[p]
    /\ alive' = [alive EXCEPT ![p] = FALSE]
    /\ UNCHANGED <<acl, listeners, conns, req, reply, cleaned, nextId>>

\* The monitor notices p's death (its pidfd is readable): p's listeners go,
\* resetting their queues as Unlisten does; p's ends of every conn close;
\* conns closed at both ends leave the table; p's request and reply go.
Cleanup(p) ==
    /\ ~alive[p]
    /\ ~cleaned[p]
    /\ LET mine == {a \in Addrs : Owns(p, a)}
           reset == IF CleanupQueues THEN QueuedAt(mine) ELSE {}
           closeP(r) == [r EXCEPT
               !.cstate = IF r.client = p THEN "closed" ELSE @,
               !.sstate = IF r.server = p /\ @ = "open" THEN "closed" ELSE @]
       IN /\ listeners' = [a \in Addrs |-> IF a \in mine THEN None ELSE listeners[a]]
          /\ conns' = Drop(Reset([c \in Ids |-> IF conns[c] = None THEN None
                                                ELSE closeP(conns[c])], reset))
    /\ req' = [req EXCEPT ![p] = None]
    /\ reply' = [reply EXCEPT ![p] = NoReply]
    /\ cleaned' = [cleaned EXCEPT ![p] = TRUE]
    /\ UNCHANGED <<alive, acl, nextId>>

\* The operator reloads the rules: new listens and connects use them;
\* existing listeners and conns are unaffected.
Reload(acl2) ==
    /\ acl2 # acl
    /\ acl' = acl2
    /\ UNCHANGED <<alive, listeners, conns, req, reply, cleaned, nextId>>

\* Every process is dead and cleaned up: the model stops.  (Stuttering here
\* keeps TLC's deadlock check for real deadlocks only.)
Done ==
    /\ \A p \in Procs : ~alive[p] /\ cleaned[p]
    /\ UNCHANGED vars

Next ==
    \/ \E p \in Procs :
          \/ \E a \in Addrs : \/ Listen(p, a) \/ ListenDenied(p, a) \/ Unlisten(p, a)
                              \/ Connect(p, a) \/ Accept(p, a)
          \/ HandleConnect(p)
          \/ \E c \in Ids : Close(p, c)
          \/ Die(p)
          \/ Cleanup(p)
    \/ \E acl2 \in Acls : Reload(acl2)
    \/ Done

\* The monitor answers every request and notices every death; a live owner
\* keeps accepting.  The processes need not do anything else.
Fairness ==
    /\ \A p \in Procs : WF_vars(HandleConnect(p)) /\ WF_vars(Cleanup(p))
    /\ \A a \in Addrs : WF_vars(\E p \in Procs : Accept(p, a))

Spec == Init /\ [][Next]_vars /\ Fairness

-------------------------------------------------------------------------------
(* Safety: invariants *)

\* Every conn was made by exactly one HandleConnect for exactly one client,
\* and each conn id is in exactly one place.
AcceptedMatchesOneConnect ==
    \* ids are given out in order, each once: only ids below nextId are used
    /\ \A c \in Ids : conns[c] # None => c < nextId
    \* every queued id is a conn queued at that address for that owner ...
    /\ \A a \in Addrs : listeners[a] # None =>
          \A i \in DOMAIN listeners[a].queue :
              LET c == listeners[a].queue[i] IN
              /\ conns[c] # None
              /\ conns[c].sstate = "queued"
              /\ conns[c].addr = a
              /\ conns[c].server = listeners[a].owner
    \* ... and no id is queued twice, in one queue or in two
    /\ \A a, b \in Addrs : listeners[a] # None /\ listeners[b] # None =>
          \A i \in DOMAIN listeners[a].queue, j \in DOMAIN listeners[b].queue :
              listeners[a].queue[i] = listeners[b].queue[j] => a = b /\ i = j
    \* every queued conn is in its listener's queue: accepted at most once
    /\ \A c \in Ids : Queued(c) =>
          /\ listeners[conns[c].addr] # None
          /\ c \in Range(listeners[conns[c].addr].queue)
    \* a "ring" reply names a conn given out to that process, and no other's
    /\ \A p \in Procs : reply[p].kind = "ring" =>
          /\ reply[p].conn < nextId
          /\ conns[reply[p].conn] # None => conns[reply[p].conn].client = p
    /\ \A p, q \in Procs : p # q /\ reply[p].kind = "ring" /\ reply[q].kind = "ring"
          => reply[p].conn # reply[q].conn

\* No listener ever holds more than Backlog queued conns.
BacklogBound ==
    \A a \in Addrs : listeners[a] # None => Len(listeners[a].queue) <= Backlog

\* Once the monitor has cleaned up after p, nothing in its state refers to p
\* as live; and the table never holds a conn closed at both ends.
NoLeak ==
    /\ \A p \in Procs : cleaned[p] =>
          /\ ~alive[p]
          /\ \A a \in Addrs : ~Owns(p, a)
          /\ \A c \in Ids : conns[c] # None =>
                /\ conns[c].client = p => conns[c].cstate = "closed"
                /\ conns[c].server = p => conns[c].sstate = "closed"
          /\ req[p] = None
          /\ reply[p] = NoReply
    /\ \A c \in Ids : conns[c] # None =>
          ~(conns[c].cstate = "closed" /\ conns[c].sstate = "closed")

(* Safety: properties of steps *)

\* No connection bypasses the ACL: every listener and every conn was allowed
\* by the ACL in force when it was made, and so was every "kernel" answer
\* (the kernel connection it stands for is not in the monitor's table).
NoBypass ==
    [][ /\ \A a \in Addrs : listeners[a] = None /\ listeners'[a] # None =>
              <<"listen", listeners'[a].owner, a>> \in acl
        /\ \A c \in Ids : conns[c] = None /\ conns'[c] # None =>
              <<"connect", conns'[c].client, conns'[c].addr>> \in acl
        /\ \A p \in Procs : reply[p].kind = "none" /\ reply'[p].kind = "kernel" =>
              <<"connect", p, req[p]>> \in acl
      ]_vars

\* A conn enters the table once, under a fresh id, with a "ring" answer to its
\* client; afterwards its ends and address never change, its server side
\* never returns to "queued", and a closed side stays closed.
ConnsCreatedOnce ==
    [][ /\ nextId' \in {nextId, nextId + 1}
        /\ \A c \in Ids :
              /\ conns[c] = None /\ conns'[c] # None =>
                    /\ c = nextId /\ nextId' = nextId + 1
                    /\ reply'[conns'[c].client] = [kind |-> "ring", conn |-> c]
              /\ conns[c] # None /\ conns'[c] # None =>
                    /\ conns'[c].client = conns[c].client
                    /\ conns'[c].server = conns[c].server
                    /\ conns'[c].addr = conns[c].addr
                    /\ conns[c].sstate # "queued" => conns'[c].sstate # "queued"
                    /\ conns[c].sstate = "closed" => conns'[c].sstate = "closed"
                    /\ conns[c].cstate = "closed" => conns'[c].cstate = "closed"
      ]_vars

-------------------------------------------------------------------------------
(* Liveness *)

(* Each goal is written as []<>(no longer pending): TLC checks that form     *)
(* without a tableau, several times faster than P ~> Q.  Together with       *)
(* StablePending it is the leads-to property named in the comment: a         *)
(* pending thing stays pending until its goal holds, so "infinitely often    *)
(* not pending" means "every time pending, later resolved".  The ~> forms    *)
(* are below as well (...LeadsTo); MCConnectLeadsTo.cfg checks them.         *)

\* What is pending stays so until resolved: a request until it is answered or
\* its process cleaned up; a death forever (no process comes back), and a
\* clean-up forever.
StablePending ==
    [][ \A p \in Procs :
          /\ req[p] # None =>
                \/ req'[p] = req[p]
                \/ req'[p] = None /\ (reply'[p].kind # "none" \/ cleaned'[p])
          /\ ~alive[p] => ~alive'[p]
          /\ cleaned[p] => cleaned'[p]
      ]_vars

\* Every request is answered (or forgotten because its process died):
\* (req[p] # None) ~> (reply[p].kind # "none" \/ cleaned[p]).
RequestsAnswered == \A p \in Procs : []<>(req[p] = None)

\* Every queued conn is eventually accepted or reset (or, closed at both
\* ends, gone): Queued(c) ~> ~Queued(c).
QueuedResolved == \A c \in Ids : []<>~Queued(c)

\* Every dead process is eventually cleaned up: ~alive[p] ~> cleaned[p].
DeadCleaned == \A p \in Procs : []<>(alive[p] \/ cleaned[p])

RequestsAnsweredLeadsTo ==
    \A p \in Procs : (req[p] # None) ~> (reply[p].kind # "none" \/ cleaned[p])
QueuedResolvedLeadsTo == \A c \in Ids : Queued(c) ~> ~Queued(c)
DeadCleanedLeadsTo == \A p \in Procs : ~alive[p] ~> cleaned[p]
===============================================================================
