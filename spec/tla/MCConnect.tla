------------------------------ MODULE MCConnect ------------------------------
(***************************************************************************)
(* Model-checking wrapper.  TLC's .cfg files cannot write tuples, so the   *)
(* ACLs (sets of <<direction, proc, addr>> triples) are defined here and   *)
(* a config substitutes them (Acls <- SmallAcls).  Each definition is a    *)
(* literal value, so spec/connect.py can read it as well.                  *)
(***************************************************************************)
EXTENDS Connect

\* MCConnectSmall and its bad variants: processes p1 p2, one address a1.
\* At first p1 may listen, and both may connect (p1 to its own listener, so
\* one process holds both ends of a conn).  After a reload only p1 may
\* connect: p1's listen is denied, and p2's connect is refused whether or
\* not p1's listener (from before the reload) is there.
SmallInitAcl ==
    {<<"listen", "p1", "a1">>, <<"connect", "p1", "a1">>, <<"connect", "p2", "a1">>}

SmallAcls ==
    { {<<"listen", "p1", "a1">>, <<"connect", "p1", "a1">>, <<"connect", "p2", "a1">>},
      {<<"connect", "p1", "a1">>} }

\* MCConnect, processes p1 p2 p3, addresses a1 a2.  At first p1 listens on
\* a1 and p2 on a2, and p2 and p3 may connect to a1 (its queue can hold
\* conns of two clients).  After a reload p2 may no longer listen, nor
\* connect to a1 where p1 still listens; p1 may connect to a2, where p2's
\* listener from before the reload still stands.
FullInitAcl ==
    {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>,
     <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>}

FullAcls ==
    { {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>,
       <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>},
      {<<"listen", "p1", "a1">>, <<"connect", "p3", "a1">>, <<"connect", "p1", "a2">>} }
===============================================================================
