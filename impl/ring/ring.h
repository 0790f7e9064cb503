/*
 * ring.h - the hot path of the shared-memory ring, in C (compiled by cffi).
 *
 * One function per operation, each doing the WHOLE operation so that a
 * Python call costs one crossing: check the header, load the peer's
 * position, copy with wrap-around, publish the new position, and say whether
 * the peer must be woken.  The Python side (impl/ring/__init__.py) only
 * writes the eventfd when told to, and blocks on its own eventfd.
 *
 * The layout (field offsets, magic, payload offset) is NOT written here: it
 * lives in impl/ring/layout.py and reaches this file as SD_* macros passed
 * by _build.py, so the two cannot drift apart.
 *
 * Memory ordering (RingCredit.tla, transport "shm"):
 *   writer: copy bytes into the slots, then store tail with RELEASE.
 *   reader: load tail with ACQUIRE, then copy the bytes out; so it never
 *           sees a tail before the bytes below it.
 *   reader: copy bytes out, then store head with RELEASE.
 *   writer: load head with ACQUIRE before overwriting slots; so it never
 *           overwrites a slot the reader is still copying out.
 *
 * Sleeping without losing a wake-up (Dekker-style handshake):
 *   sleeper (say the reader, finding the ring empty):
 *       store reader_sleeping = 1;  fence(seq_cst);  load tail
 *       -> data after all: clear the flag and read it; else block on data_efd.
 *   waker (the writer, after a write):
 *       store tail;  fence(seq_cst);  load reader_sleeping
 *       -> set: clear it and report "wake needed"; Python writes data_efd.
 *   The two fences are ordered in the single total order of seq_cst
 *   fences.  If the writer's fence comes first, the reader's load of tail
 *   after its own fence sees the new tail and it does not block.  If the
 *   reader's fence comes first, the writer's load sees reader_sleeping = 1
 *   and it signals the eventfd, whose counter stays set until the reader
 *   reads it, so a signal sent before the reader blocks is not lost either.
 *   Without the fences both loads could be satisfied before the other
 *   side's store leaves its store buffer (x86 reorders a store with a
 *   later load): the reader would sleep on data the writer did not
 *   signal - a lost wake-up.  The writer/space side is the mirror image
 *   (writer_sleeping, head, space_efd).  Clearing the flag is an exchange
 *   so that only one party signals per sleep.
 *
 * Return values (int64_t), shared with the Python path:
 *   write:  >= 0: (bytes written << 1) | wake_reader
 *   read:   >= 0: (bytes read << 2) | eof << 1 | wake_writer
 *           (eof only with 0 bytes: the writer closed and all was read)
 *   < 0:    an odd SD_ERR_* code.  Errors are odd so that Python tests a
 *           single bit ("r & 1") to leave the fast path for both a wake-up
 *           and an error.
 *
 * Tokens (TokenSharing.tla; only for an endpoint whose tok_off is set, i.e.
 * a socket's): the token word at tok_off is owner_tid << 2 | WANT | BUSY.
 *   A call whose thread owns the token and finds it idle with nobody
 *   waiting takes BUSY with one CAS (TokenSharing!Enter) -- no lock, no
 *   system call.  A call that finds it BUSY by its own thread is the
 *   continuation of an operation and goes on.  Anything else returns
 *   SD_ERR_TOKEN and the library takes the slow path (impl/token).
 *   A call that entered leaves (TokenSharing!Exit: clear BUSY) when the
 *   operation is complete: a write that wrote all of len, a read that read
 *   something or saw EOF, any error; an incomplete one keeps BUSY and the
 *   library's loop ends it with sd_token_exit.  If a waiter had set WANT,
 *   the result gets its odd bit and sd_token_pending() (per thread) says
 *   why, so the library wakes the waiter.
 * Header faults are checked on every call (a few loads of lines that sit
 * in the cache anyway; no system call).  The capacity used for every index
 * is the caller's trusted copy, validated against the mapping size at
 * attach, so a corrupt header can never make these functions read or write
 * outside the mapping.
 */
#ifndef SD_RING_H
#define SD_RING_H

#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#if !defined(SD_OFF_TAIL) || !defined(SD_DATA_OFF) || !defined(SD_MAGIC)
#error "compile ring.h through impl/ring/_build.py: it passes the layout as SD_* macros"
#endif

#define SD_PEEK 1           /* read: copy out without consuming */
#define SD_ARM  2           /* publish the sleeping flag if nothing can be done */
#define SD_NOTOK 4          /* leave the token alone (a readiness probe, not an operation) */
#define SD_WAITALL 8        /* read: the operation is complete only when len bytes are read */

/* The token word; SD_TOKEN_BUSY etc. also come from layout.py. */
#define SD_TOK_BUSY 1ULL
#define SD_TOK_WANT 2ULL
#define SD_TOK_SHIFT 2

/* sd_token_pending() after a result that got the odd bit for the token's sake */
#define SD_PEND_WAKE 1      /* the peer must be woken too (the usual odd bit) */
#define SD_PEND_WANTED 2    /* a waiter wants the token: wake it */

#define SD_ERR_CLOSED      (-1)   /* this endpoint was closed locally */
#define SD_ERR_PIPE        (-3)   /* the reader closed: writing is pointless */
#define SD_ERR_MAGIC       (-5)   /* the header's magic word is wrong */
#define SD_ERR_CAPACITY    (-7)   /* the header's capacity differs from the mapping's */
#define SD_ERR_HEAD_AHEAD  (-9)   /* head > tail */
#define SD_ERR_TAIL_BEYOND (-11)  /* tail > head + capacity */
#define SD_ERR_ARG         (-13)  /* sd_ring_store: not a flag's offset */
#define SD_ERR_TOKEN       (-15)  /* this thread does not hold the endpoint's token */

/* BEGIN CDEF - declarations that _build.py hands to cffi's cdef() */
struct sd_ring {
    char *base;          /* the mapping; NULL once this endpoint is closed */
    uint64_t capacity;   /* trusted copy, validated against the mapping size */
    uint64_t tok_off;    /* offset of this side's token word; 0: no token checks */
};
int64_t sd_ring_write(struct sd_ring *r, const char *src, uint64_t off, uint64_t len,
                      int flags, int64_t spin_ns);
int64_t sd_ring_read(struct sd_ring *r, char *dst, uint64_t off, uint64_t len,
                     int flags, int64_t spin_ns);
int sd_ring_store(struct sd_ring *r, uint64_t off, uint64_t value);
uint64_t sd_token_self(void);
uint64_t sd_token_load(struct sd_ring *r);
int sd_token_cas(struct sd_ring *r, uint64_t expect, uint64_t desired);
uint64_t sd_token_or(struct sd_ring *r, uint64_t bits);
int sd_token_exit(struct sd_ring *r);
int sd_token_pending(void);
int sd_token_take(struct sd_ring *r, uint64_t extra, int64_t spin_ns);
void sd_token_forget_self(void);
/* END CDEF */

#define SD_WORD(base, off) ((uint64_t *)((base) + (off)))
#define SD_LOAD(p, mo) __atomic_load_n((p), (mo))
#define SD_STORE(p, v, mo) __atomic_store_n((p), (v), (mo))
#define SD_FENCE() __atomic_thread_fence(__ATOMIC_SEQ_CST)

#if defined(__x86_64__) || defined(__i386__)
#define SD_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define SD_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define SD_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

static int64_t sd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The constant part of the header: magic and capacity. */
static inline int64_t sd_check_header(const char *b, uint64_t cap)
{
    if (SD_LOAD(SD_WORD(b, SD_OFF_MAGIC), __ATOMIC_RELAXED) != (uint64_t)SD_MAGIC)
        return SD_ERR_MAGIC;
    if (SD_LOAD(SD_WORD(b, SD_OFF_CAPACITY), __ATOMIC_RELAXED) != cap)
        return SD_ERR_CAPACITY;
    return 0;
}

/* RingCredit!Bounds: head <= tail and tail - head <= C. */
static inline int64_t sd_check_positions(uint64_t head, uint64_t tail, uint64_t cap)
{
    if (head > tail)
        return SD_ERR_HEAD_AHEAD;
    if (tail - head > cap)
        return SD_ERR_TAIL_BEYOND;
    return 0;
}

/* Copy n <= cap bytes into the payload from stream position pos on. */
static inline void sd_copy_in(char *data, uint64_t cap, uint64_t pos, const char *src, uint64_t n)
{
    uint64_t slot = pos % cap;
    uint64_t first = cap - slot;
    if (first > n)
        first = n;
    memcpy(data + slot, src, first);
    if (n > first)
        memcpy(data, src + first, n - first);
}

/* Copy n <= cap bytes out of the payload from stream position pos on. */
static inline void sd_copy_out(const char *data, uint64_t cap, uint64_t pos, char *dst, uint64_t n)
{
    uint64_t slot = pos % cap;
    uint64_t first = cap - slot;
    if (first > n)
        first = n;
    memcpy(dst, data + slot, first);
    if (n > first)
        memcpy(dst + first, data, n - first);
}

/* After publishing a position: does the peer sleep and need a signal? */
static inline int sd_take_sleeper(char *b, uint64_t flag_off)
{
    uint64_t *flag = SD_WORD(b, flag_off);
    SD_FENCE();  /* RingWakeup!WriterFence: our position store before the flag load */
    if (!SD_LOAD(flag, __ATOMIC_RELAXED))  /* RingWakeup!LoadFlag */
        return 0;
    return __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST) != 0;  /* RingWakeup!ClearFlag */
}

/* One attempt to write; RingCredit!Write for min(len, free) bytes. */
static int64_t sd_try_write(char *b, uint64_t cap, const char *src, uint64_t len)
{
    int64_t err = sd_check_header(b, cap);
    if (err)
        return err;
    if (SD_LOAD(SD_WORD(b, SD_OFF_CLOSED_RD), __ATOMIC_ACQUIRE))
        return SD_ERR_PIPE;
    uint64_t head = SD_LOAD(SD_WORD(b, SD_OFF_HEAD), __ATOMIC_ACQUIRE);
    uint64_t tail = SD_LOAD(SD_WORD(b, SD_OFF_TAIL), __ATOMIC_RELAXED);  /* ours */
    err = sd_check_positions(head, tail, cap);
    if (err)
        return err;
    uint64_t n = cap - (tail - head);
    if (n > len)
        n = len;
    if (n == 0)
        return 0;
    sd_copy_in(b + SD_DATA_OFF, cap, tail, src, n);
    SD_STORE(SD_WORD(b, SD_OFF_TAIL), tail + n, __ATOMIC_RELEASE);
    return (int64_t)(n << 1) | sd_take_sleeper(b, SD_OFF_READER_SLEEPING);
}

/* One attempt to read; RingCredit!Recv for min(len, available) bytes. */
static int64_t sd_try_read(char *b, uint64_t cap, char *dst, uint64_t len, int peek)
{
    int64_t err = sd_check_header(b, cap);
    if (err)
        return err;
    uint64_t head = SD_LOAD(SD_WORD(b, SD_OFF_HEAD), __ATOMIC_RELAXED);  /* ours */
    uint64_t tail = SD_LOAD(SD_WORD(b, SD_OFF_TAIL), __ATOMIC_ACQUIRE);
    err = sd_check_positions(head, tail, cap);
    if (err)
        return err;
    if (tail == head) {
        /* closed_wr is stored after the last tail: if it is set, a tail
         * loaded after it is final, and an empty ring is the end. */
        if (!SD_LOAD(SD_WORD(b, SD_OFF_CLOSED_WR), __ATOMIC_ACQUIRE))
            return 0;
        tail = SD_LOAD(SD_WORD(b, SD_OFF_TAIL), __ATOMIC_ACQUIRE);
        err = sd_check_positions(head, tail, cap);
        if (err)
            return err;
        if (tail == head)
            return len ? 2 : 0;
    }
    uint64_t n = tail - head;
    if (n > len)
        n = len;
    if (n == 0)
        return 0;
    sd_copy_out(b + SD_DATA_OFF, cap, head, dst, n);
    if (peek)
        return (int64_t)(n << 2);
    SD_STORE(SD_WORD(b, SD_OFF_HEAD), head + n, __ATOMIC_RELEASE);
    return (int64_t)(n << 2) | sd_take_sleeper(b, SD_OFF_WRITER_SLEEPING);
}

/* Spin until the word at off differs from seen or a close flag is set, or
 * spin_ns have passed.  The clock is read every 64 rounds only. */
static void sd_spin(const char *b, uint64_t off, uint64_t seen, uint64_t closed_off,
                    int64_t spin_ns)
{
    int64_t deadline = sd_now_ns() + spin_ns;
    for (unsigned i = 1;; i++) {
        SD_RELAX();
        if (SD_LOAD(SD_WORD(b, off), __ATOMIC_RELAXED) != seen
            || SD_LOAD(SD_WORD(b, closed_off), __ATOMIC_RELAXED))
            return;
        if ((i & 63) == 0 && sd_now_ns() >= deadline)
            return;
    }
}

/* This thread's id, shifted into owner position; cached per thread.  A
 * fork child's thread starts with its parent's copy of the cache: the
 * library clears it (sd_token_forget_self) in its at-fork child hook. */
static __thread uint64_t sd_me;
/* SD_PEND_* of this thread's last call whose exit found WANT set. */
static __thread int sd_pending;

static inline uint64_t sd_self(void)
{
    if (sd_me == 0)
        sd_me = (uint64_t)syscall(SYS_gettid) << SD_TOK_SHIFT;
    return sd_me;
}

uint64_t sd_token_self(void)
{
    return sd_self() >> SD_TOK_SHIFT;
}

void sd_token_forget_self(void)
{
    sd_me = 0;
}

/* TokenSharing!Enter, or the continuation of our own operation.
 * Returns 1 if this call entered (it must leave), 0 if it continues one,
 * SD_ERR_TOKEN if the token is not ours to use now. */
static inline int64_t sd_tok_enter(uint64_t *w)
{
    uint64_t me = sd_self();
    uint64_t cur = SD_LOAD(w, __ATOMIC_RELAXED);
    if ((cur & ~SD_TOK_WANT) == (me | SD_TOK_BUSY))
        return 0;
    if (cur == me && __atomic_compare_exchange_n(w, &cur, me | SD_TOK_BUSY, 0,
                                                 __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
        return 1;
    return SD_ERR_TOKEN;
}

/* TokenSharing!Exit: clear BUSY; returns whether a waiter set WANT. */
static inline int sd_tok_leave(uint64_t *w)
{
    uint64_t old = __atomic_fetch_and(w, ~SD_TOK_BUSY, __ATOMIC_RELEASE);
    return (old & SD_TOK_WANT) != 0;
}

/* Leave after an operation that entered, if it is complete; fold a waiter's
 * WANT into the result (odd bit + sd_pending). */
static inline int64_t sd_tok_finish(uint64_t *w, int64_t res, int complete)
{
    if (!complete || !sd_tok_leave(w))
        return res;
    sd_pending = SD_PEND_WANTED | (res >= 0 ? (int)(res & 1) : 0);
    return res >= 0 ? (res | 1) : res;
}

/* What the last odd result of this thread owed to the token (and clear it). */
int sd_token_pending(void)
{
    int p = sd_pending;
    sd_pending = 0;
    return p;
}

uint64_t sd_token_load(struct sd_ring *r)
{
    if (r->base == NULL || r->tok_off == 0)
        return 0;
    return SD_LOAD(SD_WORD(r->base, r->tok_off), __ATOMIC_ACQUIRE);
}

int sd_token_cas(struct sd_ring *r, uint64_t expect, uint64_t desired)
{
    if (r->base == NULL || r->tok_off == 0)
        return SD_ERR_CLOSED;
    return __atomic_compare_exchange_n(SD_WORD(r->base, r->tok_off), &expect, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

uint64_t sd_token_or(struct sd_ring *r, uint64_t bits)
{
    if (r->base == NULL || r->tok_off == 0)
        return 0;
    /* An explicit CAS loop: gcc 12 -O2 miscompiled __atomic_fetch_or here
     * (the loop's cmpxchg addressed base + old value instead of base + off). */
    uint64_t *w = SD_WORD(r->base, r->tok_off);
    uint64_t old = SD_LOAD(w, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(w, &old, old | bits, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_RELAXED))
        ;
    return old;
}

/* TokenSharing!Take for the first waiter of a process that holds the token:
 * as soon as the word is not BUSY, CAS it to this thread | BUSY | extra
 * (extra: WANT when others still wait).  Spins up to spin_ns (the GIL is
 * released meanwhile, so the owner can finish); 1 if taken, 0 if not. */
int sd_token_take(struct sd_ring *r, uint64_t extra, int64_t spin_ns)
{
    if (r->base == NULL || r->tok_off == 0)
        return SD_ERR_CLOSED;
    uint64_t *w = SD_WORD(r->base, r->tok_off);
    uint64_t mine = sd_self() | SD_TOK_BUSY | (extra & SD_TOK_WANT);
    int64_t deadline = 0;
    for (unsigned i = 0;; i++) {
        uint64_t cur = SD_LOAD(w, __ATOMIC_RELAXED);
        if (!(cur & SD_TOK_BUSY)) {
            if (__atomic_compare_exchange_n(w, &cur, mine, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_RELAXED))
                return 1;
            continue;
        }
        if (spin_ns <= 0)
            return 0;
        if (i == 0)
            deadline = sd_now_ns() + spin_ns;
        else if ((i & 63) == 0 && sd_now_ns() >= deadline)
            return 0;
        SD_RELAX();
    }
}

/* End the calling thread's operation: 1 if a waiter wants the token, 0 if
 * not, -1 if this thread was not BUSY with it (nothing changed). */
int sd_token_exit(struct sd_ring *r)
{
    if (r->base == NULL || r->tok_off == 0)
        return -1;
    uint64_t *w = SD_WORD(r->base, r->tok_off);
    uint64_t me = sd_self();
    uint64_t cur = SD_LOAD(w, __ATOMIC_RELAXED);
    if ((cur & ~SD_TOK_WANT) != (me | SD_TOK_BUSY))
        return -1;
    return sd_tok_leave(w);
}

static int64_t sd_write_op(struct sd_ring *r, const char *src, uint64_t len,
                           int flags, int64_t spin_ns);
static int64_t sd_read_op(struct sd_ring *r, char *dst, uint64_t len,
                          int flags, int64_t spin_ns);

int64_t sd_ring_write(struct sd_ring *r, const char *src, uint64_t off, uint64_t len,
                      int flags, int64_t spin_ns)
{
    char *b = r->base;
    if (b == NULL)
        return SD_ERR_CLOSED;
    src += off;
    if (r->tok_off == 0 || (flags & SD_NOTOK))
        return sd_write_op(r, src, len, flags, spin_ns);
    uint64_t *w = SD_WORD(b, r->tok_off);
    int64_t entered = sd_tok_enter(w);
    if (entered < 0)
        return entered;
    int64_t res = sd_write_op(r, src, len, flags, spin_ns);
    if (!entered)
        return res;
    return sd_tok_finish(w, res, res < 0 || (uint64_t)(res >> 1) == len);
}

int64_t sd_ring_read(struct sd_ring *r, char *dst, uint64_t off, uint64_t len,
                     int flags, int64_t spin_ns)
{
    char *b = r->base;
    if (b == NULL)
        return SD_ERR_CLOSED;
    dst += off;
    if (r->tok_off == 0 || (flags & SD_NOTOK))
        return sd_read_op(r, dst, len, flags, spin_ns);
    uint64_t *w = SD_WORD(b, r->tok_off);
    int64_t entered = sd_tok_enter(w);
    if (entered < 0)
        return entered;
    int64_t res = sd_read_op(r, dst, len, flags, spin_ns);
    if (!entered)
        return res;
    int complete = res < 0 || (res & 2) || len == 0
                   || ((flags & SD_WAITALL) ? (uint64_t)(res >> 2) == len : res != 0);
    return sd_tok_finish(w, res, complete);
}

static int64_t sd_write_op(struct sd_ring *r, const char *src, uint64_t len,
                           int flags, int64_t spin_ns)
{
    char *b = r->base;
    uint64_t cap = r->capacity;
    int64_t res = sd_try_write(b, cap, src, len);
    if (res != 0 || len == 0)
        return res;
    if (spin_ns > 0) {  /* full: wait for the reader to move head */
        uint64_t head = SD_LOAD(SD_WORD(b, SD_OFF_HEAD), __ATOMIC_RELAXED);
        sd_spin(b, SD_OFF_HEAD, head, SD_OFF_CLOSED_RD, spin_ns);
        res = sd_try_write(b, cap, src, len);
        if (res != 0)
            return res;
    }
    if (flags & SD_ARM) {
        uint64_t *flag = SD_WORD(b, SD_OFF_WRITER_SLEEPING);
        SD_STORE(flag, 1, __ATOMIC_RELAXED);
        SD_FENCE();  /* Dekker: publish the flag before re-checking head */
        res = sd_try_write(b, cap, src, len);
        if (res != 0)
            SD_STORE(flag, 0, __ATOMIC_RELAXED);
    }
    return res;
}

static int64_t sd_read_op(struct sd_ring *r, char *dst, uint64_t len,
                          int flags, int64_t spin_ns)
{
    char *b = r->base;
    uint64_t cap = r->capacity;
    int peek = flags & SD_PEEK;
    int64_t res = sd_try_read(b, cap, dst, len, peek);
    if (res != 0 || len == 0)
        return res;
    if (spin_ns > 0) {  /* empty: wait for the writer to move tail */
        uint64_t tail = SD_LOAD(SD_WORD(b, SD_OFF_TAIL), __ATOMIC_RELAXED);
        sd_spin(b, SD_OFF_TAIL, tail, SD_OFF_CLOSED_WR, spin_ns);
        res = sd_try_read(b, cap, dst, len, peek);
        if (res != 0)
            return res;
    }
    if (flags & SD_ARM) {
        uint64_t *flag = SD_WORD(b, SD_OFF_READER_SLEEPING);
        SD_STORE(flag, 1, __ATOMIC_RELAXED);           /* RingWakeup!Arm */
        SD_FENCE();  /* RingWakeup!ReaderFence: the flag before re-checking tail */
        res = sd_try_read(b, cap, dst, len, peek);     /* RingWakeup!RecheckTail */
        if (res != 0)
            SD_STORE(flag, 0, __ATOMIC_RELAXED);
    }
    return res;
}

/* Store a header flag (a close flag or this side's sleeping flag) with a
 * full fence: a close flag must not pass the last position store, and a
 * peer reading it must see every position stored before it. */
int sd_ring_store(struct sd_ring *r, uint64_t off, uint64_t value)
{
    if (r->base == NULL)
        return SD_ERR_CLOSED;
    if (off % 8 != 0 || off < SD_OFF_TAIL || off >= SD_DATA_OFF)
        return SD_ERR_ARG;  /* not a flag: refuse rather than scribble */
    SD_STORE(SD_WORD(r->base, off), value, __ATOMIC_SEQ_CST);
    return 0;
}

#endif /* SD_RING_H */
