------------------------------ MODULE MCConnect ------------------------------
(***************************************************************************)
(* Model-checking wrapper.  TLC's .cfg files cannot write tuples, so the   *)
(* ACLs (sets of <<direction, proc, addr>> triples) are defined here and   *)
(* a config substitutes them (Acls <- SmallAcls).  Each definition is a    *)
(* literal value, so spec/connect.py reads it too.                         *)
(***************************************************************************)
EXTENDS Connect

\* MCConnectSmall: p1 may listen and anyone may connect; after a reload, p2
\* may listen and only p1 may connect.
SmallInitAcl ==
    {<<"listen", "p1", "a1">>, <<"connect", "p1", "a1">>, <<"connect", "p2", "a1">>}
SmallAcls ==
    { {<<"listen", "p1", "a1">>, <<"connect", "p1", "a1">>, <<"connect", "p2", "a1">>},
      {<<"listen", "p2", "a1">>, <<"connect", "p1", "a1">>} }

FullInitAcl ==
    {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>,
     <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>, <<"connect", "p1", "a2">>}
FullAcls ==
    { {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>,
       <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>, <<"connect", "p1", "a2">>},
      {<<"listen", "p1", "a1">>, <<"listen", "p3", "a2">>,
       <<"connect", "p2", "a1">>, <<"connect", "p1", "a2">>, <<"connect", "p2", "a2">>} }

T1Init == {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>, <<"connect", "p2", "a1">>, <<"connect", "p3", "a2">>}
T1 == {T1Init, {<<"listen", "p1", "a1">>, <<"listen", "p3", "a2">>, <<"connect", "p2", "a1">>}}
T2Init == {<<"listen", "p1", "a1">>, <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>}
T2 == {T2Init, {<<"listen", "p2", "a1">>, <<"connect", "p3", "a1">>}}

T3Init == {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>, <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>}
T3 == {T3Init, {<<"listen", "p1", "a1">>, <<"listen", "p3", "a2">>, <<"connect", "p3", "a1">>, <<"connect", "p1", "a2">>}}

T4Init == {<<"listen", "p1", "a1">>, <<"listen", "p2", "a2">>, <<"connect", "p2", "a1">>, <<"connect", "p3", "a1">>}
T4 == {T4Init, {<<"listen", "p1", "a1">>, <<"connect", "p3", "a1">>, <<"connect", "p1", "a2">>}}
===============================================================================
