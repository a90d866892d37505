/*
 * bucketly._speedups -- native core of the "unique values per key" handler.
 *
 * UniqueIndex keeps the distinct (key, value) pairs seen, counted per key,
 * with the semantics of a Python ``dict[key, set[value]]``: Python hashing
 * and equality (1 == 1.0 == True are one value), and the first object seen
 * is the one kept and returned, as a set does.
 *
 * Layout
 * ------
 * - Keys and values are each canonicalised to a dense uint32 id by an
 *   "object table" (otab): open addressing, power-of-two capacity, linear
 *   probing, murmur3 fmix64 over the Python hash, max load 3/4.  A 16-byte
 *   slot holds the object pointer, its id and 32 more bits of the mixed
 *   hash (a tag), so a probe rejects mismatches without touching the
 *   object.  A tag match on two exact str is confirmed by comparing hash,
 *   length, kind and bytes (what dict does); anything else needs equal full
 *   Python hashes and PyObject_RichCompareBool, exactly like dict.  An entry
 *   array (id -> object, full hash) is the way back, and lets the table be
 *   rebuilt on growth without running any Python code.
 * - The pairs are stored per key: key id -> a 16-byte "kset" holding the
 *   value ids of that key.  A key with one or two values keeps them inline;
 *   from the third on, a uint32 open-addressing set (value_id + 1, 0 =
 *   empty; Fibonacci hashing, linear probing, power-of-two capacity from 8,
 *   max load 3/4, doubling).  Compared with one global set of uint64
 *   (key_id << 32 | value_id), this halves the memory per pair, gives
 *   count(key) and values(key) in O(that key), and measured the same speed.
 *
 * add_events() works in chunks of CHUNK events: (A) fetch the two fields of
 * each event and hash them (Python code may run here), prefetching the
 * table slots; (B) prefetch the stored objects the lookups will compare
 * with; (C) resolve the ids, in order; (D) insert the pairs, prefetched.
 * The table lookups are cache misses, and overlapping them is what makes
 * this faster than a dict lookup per event.  Events are still applied
 * strictly in order: on an error, the events before the bad one are applied
 * and nothing after it is.
 *
 * copy() duplicates the tables as they are (slots, entries, each key's
 * set) and takes one more reference to each key and value object, as the
 * original holds: about 3 ms for a million pairs, against some 200 ms to
 * re-add them.  update(mapping) adds pair by pair, in order, as add() does,
 * but for a list (or tuple) of values it works ahead in the list (prefetch
 * the objects, hash fresh strings, prefetch their value-table slots, then
 * the objects they will be compared with), looks an exact str/int key up
 * once rather than per value, and sizes a new key's set for the whole
 * list: about 4x faster than add() called from Python for each pair.
 *
 * export() gives (keys, values, pairs): the keys with a value and the value
 * table's objects, each in id order, and bytes holding for each key a
 * little-endian uint32 count then its value ids (about 1.5 ms for a million
 * pairs).  from_export(keys, values, pairs) checks the data (it comes from
 * a file) before building anything, then does what cls() and add() of each
 * pair in order would, looking each key and each value index up once and
 * sizing each key's set for its count (about 17 ms for a million pairs).
 *
 * Errors
 * ------
 * Every exception raised by add_events() carries an int attribute
 * ``applied``: how many events of this call were applied (== the index of
 * the bad event).  A non-dict event raises TypeError (``event 3 is a list,
 * not a map``).  A missing field raises MissingFieldError, a KeyError
 * subclass whose str() is the plain message (``event 3 has no "url"
 * field``), not KeyError's repr-quoted one: ``except KeyError`` still works
 * and the message reads well.  An unhashable field raises the TypeError of
 * hash().  Indexes in messages are 0-based positions in the list.
 *
 * Limits: at most 2**32-1 distinct keys and 2**32-1 distinct values
 * (OverflowError beyond).  Every allocation is checked (MemoryError); a
 * failed allocation leaves the structure consistent (a key or value may then
 * be interned with no pair, which is invisible: key_count(), counts(),
 * items() and values() only see pairs).
 *
 * Re-entrancy: hashing and comparing arbitrary objects can run Python code
 * (__hash__, __eq__), and so can allocating (GC, finalizers).  While an
 * operation holds pointers into the tables, mutating calls on the same
 * index (add, add_events, clear) raise RuntimeError; reads are allowed.
 *
 * __sizeof__ counts the native arrays, not the key/value objects (as
 * dict.__sizeof__ does not count its keys).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Number of distinct ids allowed per table: ids are 0 .. UI_ID_LIMIT-1.
   Overridable at compile time to test the OverflowError path. */
#ifndef UI_ID_LIMIT
#define UI_ID_LIMIT 0xFFFFFFFFu
#endif

#if defined(__GNUC__) || defined(__clang__)
#define UI_LIKELY(x) __builtin_expect(!!(x), 1)
#define UI_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define UI_PREFETCH(p) __builtin_prefetch((p), 1, 3)
#define UI_PREFETCH_R(p) __builtin_prefetch((p), 0, 3)
/* For a void helper whose only effect is a prefetch: GCC deems such a
   function pure and deletes the calls unless it is inlined first. */
#define UI_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define UI_LIKELY(x) (x)
#define UI_UNLIKELY(x) (x)
#define UI_PREFETCH(p) ((void)0)
#define UI_PREFETCH_R(p) ((void)0)
#define UI_ALWAYS_INLINE static inline
#endif

#define OTAB_MIN_CAP 16
#define KSET_MIN_LG 3       /* first table of a key: 8 slots */
#ifndef CHUNK
#define CHUNK 64            /* events per batch in add_events */
#endif
/* Prefetch the stored keys only when the key table is too big to stay in
   cache (with ~1000 keys this costs more than it saves). */
#ifndef KEYS_PREFETCH_MIN
#define KEYS_PREFETCH_MIN 16383
#endif

static PyObject *MissingFieldError = NULL;   /* owned by the module */

/* 64-byte aligned allocation for the hash tables, zeroed if `zero` (mmap'ed
   ones always are).  On Linux, tables of 2 MiB or more are mmap'ed 2
   MiB-aligned and marked MADV_HUGEPAGE: their accesses are random, and with
   4 KiB pages nearly every probe would also be a TLB miss (measured: ~7%
   faster add_events).  Pages are zero-filled lazily by the kernel. */
#define TAB_ALIGN 64
#if defined(__linux__)
#include <sys/mman.h>
#if defined(MAP_ANONYMOUS)
#define UI_USE_MMAP 1
#define HUGE_SZ ((size_t)2 << 20)
#endif
#endif

static void *
tab_alloc(size_t n, size_t size, int zero)
{
    if (size == 0 || n > (SIZE_MAX / 2) / size)
        return NULL;
    size_t bytes = n * size;
#ifdef UI_USE_MMAP
    if (bytes >= HUGE_SZ) {
        size_t len = (bytes + HUGE_SZ - 1) & ~(HUGE_SZ - 1);
        char *p = mmap(NULL, len + HUGE_SZ, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        char *a = (char *)(((uintptr_t)p + HUGE_SZ - 1)
                           & ~(uintptr_t)(HUGE_SZ - 1));
        if (a > p)
            munmap(p, (size_t)(a - p));
        if (a + len < p + len + HUGE_SZ)
            munmap(a + len, (size_t)(p + len + HUGE_SZ - (a + len)));
#ifdef MADV_HUGEPAGE
        (void)madvise(a, len, MADV_HUGEPAGE);
#endif
        return a;
    }
#endif
    char *raw = PyMem_Malloc(bytes + TAB_ALIGN);
    if (raw == NULL)
        return NULL;
    char *a = (char *)(((uintptr_t)raw + TAB_ALIGN)
                       & ~(uintptr_t)(TAB_ALIGN - 1));
    ((void **)a)[-1] = raw;
    if (zero)
        memset(a, 0, bytes);
    return a;
}

static void *
tab_calloc(size_t n, size_t size)
{
    return tab_alloc(n, size, 1);
}

/* A tab_calloc(n, size)-style copy of `src` (n * size bytes), or NULL. */
static void *
tab_dup(const void *src, size_t n, size_t size)
{
    void *p = tab_alloc(n, size, 0);
    if (p != NULL)
        memcpy(p, src, n * size);
    return p;
}

/* Free a tab_calloc(n, size) block (NULL allowed). */
static void
tab_free(void *p, size_t n, size_t size)
{
    if (p == NULL)
        return;
#ifdef UI_USE_MMAP
    size_t bytes = n * size;
    if (bytes >= HUGE_SZ) {
        munmap(p, (bytes + HUGE_SZ - 1) & ~(HUGE_SZ - 1));
        return;
    }
#else
    (void)n;
    (void)size;
#endif
    PyMem_Free(((void **)p)[-1]);
}

static inline uint64_t
mix64(uint64_t x)
{
    /* murmur3 fmix64 */
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* ------------------------------------------------------------------ */
/* Object table: object <-> dense uint32 id                            */
/* ------------------------------------------------------------------ */

typedef struct {
    PyObject *obj;      /* NULL: empty slot; borrowed from ent[id].obj */
    uint32_t id;
    uint32_t tag;       /* high 32 bits of mix64(hash) */
} oslot;

typedef struct {
    PyObject *obj;      /* strong reference */
    Py_hash_t hash;
} oentry;

typedef struct {
    oslot *slots;       /* NULL when nothing was ever added */
    size_t mask;        /* capacity - 1 */
    size_t grow_at;     /* grow when n reaches this */
    oentry *ent;        /* id -> (object, hash); capacity >= grow_at */
    uint32_t n;
} otab;

/* Exact-str equality, given that `a` and `b` are both exact, ready str
   whose hashes are cached (both have been hashed): what dict does. */
static inline int
str_eq(PyObject *a, PyObject *b)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(a);
    if (((PyASCIIObject *)a)->hash != ((PyASCIIObject *)b)->hash)
        return 0;
    if (PyUnicode_GET_LENGTH(b) != len)
        return 0;
    if (PyUnicode_KIND(a) != PyUnicode_KIND(b))
        return 0;
    return memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b),
                  (size_t)len * PyUnicode_KIND(a)) == 0;
}

#define OT_NOTFOUND (-1)
#define OT_ERROR (-2)

/* Look `o` (hash `h`) up.  Returns its id, OT_NOTFOUND (and *ins = the
   empty slot where it would go) or OT_ERROR (exception set).  May run
   Python code (__eq__); callers hold the busy guard so that the table
   cannot be mutated meanwhile. */
static inline int64_t
otab_find(const otab *t, PyObject *o, Py_hash_t h, size_t *ins)
{
    if (t->slots == NULL) {
        *ins = 0;
        return OT_NOTFOUND;
    }
    uint64_t m = mix64((uint64_t)h);
    uint32_t tag = (uint32_t)(m >> 32);
    size_t mask = t->mask;
    size_t i = (size_t)m & mask;
    int o_str = PyUnicode_CheckExact(o) && PyUnicode_IS_READY(o);
    for (;;) {
        const oslot *s = &t->slots[i];
        PyObject *c = s->obj;
        if (c == NULL) {
            *ins = i;
            return OT_NOTFOUND;
        }
        if (s->tag == tag) {
            if (c == o)
                return s->id;
            if (o_str && PyUnicode_CheckExact(c) && PyUnicode_IS_READY(c)) {
                if (str_eq(c, o))
                    return s->id;
            }
            else if (t->ent[s->id].hash == h) {
                uint32_t id = s->id;
                int r = PyObject_RichCompareBool(c, o, Py_EQ);
                if (r < 0)
                    return OT_ERROR;
                if (r > 0)
                    return id;
            }
        }
        i = (i + 1) & mask;
    }
}

static inline size_t
otab_empty_slot(const otab *t, Py_hash_t h)
{
    size_t i = (size_t)mix64((uint64_t)h) & t->mask;
    while (t->slots[i].obj != NULL)
        i = (i + 1) & t->mask;
    return i;
}

/* Rebuild the table with capacity `ncap` (a power of two, with room for
   the entries it has). */
static int
otab_resize(otab *t, size_t ncap)
{
    if (ncap == 0 || ncap > SIZE_MAX / 2 / sizeof(oslot)) {
        PyErr_NoMemory();
        return -1;
    }
    size_t grow_at = ncap / 4 * 3;
    if (grow_at > (size_t)UI_ID_LIMIT)
        grow_at = (size_t)UI_ID_LIMIT;
    oslot *ns = tab_calloc(ncap, sizeof(oslot));
    if (ns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    oentry *ne = PyMem_Realloc(t->ent, grow_at * sizeof(oentry));
    if (ne == NULL) {
        tab_free(ns, ncap, sizeof(oslot));
        PyErr_NoMemory();
        return -1;
    }
    t->ent = ne;
    size_t mask = ncap - 1;
    for (uint32_t id = 0; id < t->n; id++) {
        uint64_t m = mix64((uint64_t)ne[id].hash);
        size_t i = (size_t)m & mask;
        while (ns[i].obj != NULL)
            i = (i + 1) & mask;
        ns[i].obj = ne[id].obj;
        ns[i].id = id;
        ns[i].tag = (uint32_t)(m >> 32);
    }
    if (t->slots)
        tab_free(t->slots, t->mask + 1, sizeof(oslot));
    t->slots = ns;
    t->mask = mask;
    t->grow_at = grow_at;
    return 0;
}

static int
otab_grow(otab *t)
{
    return otab_resize(t, t->slots ? (t->mask + 1) * 2 : OTAB_MIN_CAP);
}

/* Best effort: size the table for `n` entries in all (no exception is
   left set; the inserts grow the table as usual if this fails). */
static void
otab_reserve(otab *t, size_t n)
{
    size_t cap = t->slots ? t->mask + 1 : OTAB_MIN_CAP;
    while (cap / 4 * 3 < n && cap < ((size_t)1 << 40))
        cap *= 2;
    if (t->slots != NULL && cap == t->mask + 1)
        return;
    if (otab_resize(t, cap) < 0)
        PyErr_Clear();
}

/* Return the id of `o`, adding it if new (*is_new set accordingly), or -1
   with an exception set. */
static inline int64_t
otab_intern(otab *t, PyObject *o, Py_hash_t h, int *is_new)
{
    size_t ins;
    int64_t id = otab_find(t, o, h, &ins);
    if (id >= 0) {
        *is_new = 0;
        return id;
    }
    if (id == OT_ERROR)
        return -1;
    if (UI_UNLIKELY(t->n >= t->grow_at)) {
        if (t->n >= (uint32_t)UI_ID_LIMIT) {
            PyErr_Format(PyExc_OverflowError,
                         "UniqueIndex: more than %lu distinct keys or values",
                         (unsigned long)UI_ID_LIMIT);
            return -1;
        }
        if (otab_grow(t) < 0)
            return -1;
        ins = otab_empty_slot(t, h);
    }
    uint32_t nid = t->n;
    Py_INCREF(o);
    t->ent[nid].obj = o;
    t->ent[nid].hash = h;
    t->slots[ins].obj = o;
    t->slots[ins].id = nid;
    t->slots[ins].tag = (uint32_t)(mix64((uint64_t)h) >> 32);
    t->n = nid + 1;
    *is_new = 1;
    return nid;
}

static size_t
otab_native_size(const otab *t)
{
    if (t->slots == NULL)
        return 0;
    return (t->mask + 1) * sizeof(oslot) + t->grow_at * sizeof(oentry);
}

/* Copy the arrays of `src` into `dst` (which owns nothing yet), without
   taking references to the objects: the caller does that once every copy
   has succeeded.  Returns 0, or -1 with MemoryError set and `dst` empty. */
static int
otab_dup(otab *dst, const otab *src)
{
    memset(dst, 0, sizeof(otab));
    if (src->slots == NULL)
        return 0;
    /* The slots point at the same objects as the entries: copied as is. */
    oslot *slots = tab_dup(src->slots, src->mask + 1, sizeof(oslot));
    oentry *ent = PyMem_Malloc(src->grow_at * sizeof(oentry));
    if (slots == NULL || ent == NULL) {
        tab_free(slots, src->mask + 1, sizeof(oslot));
        PyMem_Free(ent);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(ent, src->ent, (size_t)src->n * sizeof(oentry));
    *dst = *src;
    dst->slots = slots;
    dst->ent = ent;
    return 0;
}

/* Free what otab_dup() allocated (the objects are not released). */
static void
otab_free_arrays(otab *t)
{
    tab_free(t->slots, t->mask + 1, sizeof(oslot));
    PyMem_Free(t->ent);
    memset(t, 0, sizeof(otab));
}

/* ------------------------------------------------------------------ */
/* Per-key value sets                                                  */
/* ------------------------------------------------------------------ */

typedef struct {
    union {
        uint32_t *slots;    /* lg > 0: 1 << lg slots of value_id + 1 */
        uint32_t inl[2];    /* lg == 0: the first `count` (<= 2) value ids */
    } u;
    uint32_t count;
    uint32_t lg;            /* log2(capacity), 0 = inline */
} kset;

static inline size_t
kset_home(uint32_t vid, uint32_t lg)
{
    /* Fibonacci hashing of vid + 1 (ids are dense): the top lg bits. */
    uint32_t x = (vid + 1u) * 0x9E3779B1u;
    return lg >= 32 ? (size_t)x : (size_t)(x >> (32 - lg));
}

/* Look vid up in a table with capacity 1 << lg: 1 if present, else 0 and
   *slot = the empty slot where it would go. */
static inline int
kset_probe(const uint32_t *slots, uint32_t lg, uint32_t vid, size_t *slot)
{
    size_t mask = ((size_t)1 << lg) - 1;
    size_t i = kset_home(vid, lg);
    for (;;) {
        uint32_t x = slots[i];
        if (x == vid + 1)
            return 1;
        if (x == 0) {
            *slot = i;
            return 0;
        }
        i = (i + 1) & mask;
    }
}

/* Put vid (known absent) into a table with capacity 1 << lg. */
static inline void
kset_put(uint32_t *slots, uint32_t lg, uint32_t vid)
{
    size_t mask = ((size_t)1 << lg) - 1;
    size_t i = kset_home(vid, lg);
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = vid + 1;
}

/* Returns 1 (new), 0 (present) or -1 (MemoryError set; nothing changed).
   *bytes tracks the memory of the key tables. */
static int
kset_add(kset *ks, uint32_t vid, size_t *bytes)
{
    uint32_t c = ks->count;
    if (ks->lg == 0) {
        if ((c > 0 && ks->u.inl[0] == vid) || (c > 1 && ks->u.inl[1] == vid))
            return 0;
        if (c < 2) {
            ks->u.inl[c] = vid;
            ks->count = c + 1;
            return 1;
        }
        uint32_t *t = PyMem_Calloc((size_t)1 << KSET_MIN_LG, sizeof(uint32_t));
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        kset_put(t, KSET_MIN_LG, ks->u.inl[0]);
        kset_put(t, KSET_MIN_LG, ks->u.inl[1]);
        kset_put(t, KSET_MIN_LG, vid);
        ks->u.slots = t;
        ks->lg = KSET_MIN_LG;
        ks->count = 3;
        *bytes += ((size_t)1 << KSET_MIN_LG) * sizeof(uint32_t);
        return 1;
    }
    uint32_t lg = ks->lg;
    size_t cap = (size_t)1 << lg;
    uint32_t *slots = ks->u.slots;
    size_t i;
    if (kset_probe(slots, lg, vid, &i))
        return 0;
    if (UI_UNLIKELY((size_t)c + 1 > cap - cap / 4)) {
        /* grow (doubling) before going over 3/4 */
        if (lg >= 8 * sizeof(size_t) - 3 || lg >= 32) {
            PyErr_NoMemory();
            return -1;
        }
        uint32_t *t = PyMem_Calloc(cap * 2, sizeof(uint32_t));
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t j = 0; j < cap; j++) {
            if (slots[j])
                kset_put(t, lg + 1, slots[j] - 1);
        }
        PyMem_Free(slots);
        *bytes += cap * sizeof(uint32_t);
        ks->u.slots = slots = t;
        ks->lg = lg = lg + 1;
        kset_put(slots, lg, vid);
    }
    else {
        slots[i] = vid + 1;
    }
    ks->count = c + 1;
    return 1;
}

/* Give an inline set (2 values or fewer) a table with room for `more`
   values without growing, if that is more than it has room for.  Best
   effort, for update(): on a failed allocation nothing changes and no
   exception is set (the adds will grow the set as usual). */
static void
kset_presize(kset *ks, size_t more, size_t *bytes)
{
    if (ks->lg != 0 || more > UINT32_MAX)
        return;
    size_t want = ks->count + more;
    if (want <= 2)
        return;
    uint32_t lg = KSET_MIN_LG;
    while ((((size_t)1 << lg) - ((size_t)1 << lg) / 4) < want && lg < 31)
        lg++;
    size_t cap = (size_t)1 << lg;
    uint32_t *t = PyMem_Calloc(cap, sizeof(uint32_t));
    if (t == NULL)
        return;
    for (uint32_t j = 0; j < ks->count; j++)
        kset_put(t, lg, ks->u.inl[j]);
    ks->u.slots = t;
    ks->lg = lg;
    *bytes += cap * sizeof(uint32_t);
}

/* kset_add() of a table set with room: 1 new, 0 present, or -1 when
   kset_add() must do it (inline set, or the table must grow).  Nothing
   changes when it returns -1. */
static inline int
kset_add_fast(kset *ks, uint32_t vid)
{
    uint32_t lg = ks->lg;
    if (lg == 0)
        return -1;
    size_t cap = (size_t)1 << lg;
    size_t i;
    if (kset_probe(ks->u.slots, lg, vid, &i))
        return 0;
    if ((size_t)ks->count + 1 > cap - cap / 4)
        return -1;
    ks->u.slots[i] = vid + 1;
    ks->count++;
    return 1;
}

static inline int
kset_contains(const kset *ks, uint32_t vid)
{
    if (ks->lg == 0)
        return (ks->count > 0 && ks->u.inl[0] == vid) ||
               (ks->count > 1 && ks->u.inl[1] == vid);
    size_t unused;
    return kset_probe(ks->u.slots, ks->lg, vid, &unused);
}

static inline void
kset_prefetch(const kset *ks, uint32_t vid)
{
    if (ks->lg)
        UI_PREFETCH(&ks->u.slots[kset_home(vid, ks->lg)]);
}

/* Store new references to the values of `ks` into list[0..count). */
static void
kset_fill_list(const kset *ks, const oentry *vent, PyObject *list)
{
    Py_ssize_t j = 0;
    if (ks->lg == 0) {
        for (; j < (Py_ssize_t)ks->count; j++) {
            PyObject *o = vent[ks->u.inl[j]].obj;
            Py_INCREF(o);
            PyList_SET_ITEM(list, j, o);
        }
        return;
    }
    size_t cap = (size_t)1 << ks->lg;
    for (size_t i = 0; i < cap; i++) {
        uint32_t x = ks->u.slots[i];
        if (x) {
            PyObject *o = vent[x - 1].obj;
            Py_INCREF(o);
            PyList_SET_ITEM(list, j, o);
            j++;
        }
    }
    assert(j == (Py_ssize_t)ks->count);
}

/* ------------------------------------------------------------------ */
/* UniqueIndex                                                         */
/* ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    otab keys;
    otab vals;
    kset *ksets;            /* by key id */
    size_t ksets_cap;
    size_t kset_bytes;      /* memory of the per-key tables */
    size_t npairs;
    size_t nkeys_used;      /* keys with at least one value */
    int busy;               /* > 0 while pointers into the tables are held */
} UniqueIndex;

static PyTypeObject UniqueIndex_Type;

static int
check_not_busy(UniqueIndex *self)
{
    if (UI_UNLIKELY(self->busy)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "UniqueIndex mutated during an operation on it "
                        "(from __hash__/__eq__ or a finalizer)");
        return -1;
    }
    return 0;
}

/* Make sure ksets has room for one more key id. */
static inline int
ksets_reserve(UniqueIndex *self)
{
    if (UI_LIKELY(self->keys.n < self->ksets_cap))
        return 0;
    size_t ncap = self->ksets_cap ? self->ksets_cap * 2 : 16;
    if (ncap > SIZE_MAX / 2 / sizeof(kset)) {
        PyErr_NoMemory();
        return -1;
    }
    kset *nk = PyMem_Realloc(self->ksets, ncap * sizeof(kset));
    if (nk == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(nk + self->ksets_cap, 0, (ncap - self->ksets_cap) * sizeof(kset));
    self->ksets = nk;
    self->ksets_cap = ncap;
    return 0;
}

/* Add the pair; 1 new, 0 present, -1 MemoryError. */
static inline int
add_pair(UniqueIndex *self, uint32_t kid, uint32_t vid)
{
    kset *ks = &self->ksets[kid];
    int r = kset_add(ks, vid, &self->kset_bytes);
    if (r > 0) {
        self->npairs++;
        if (ks->count == 1)
            self->nkeys_used++;
    }
    return r;
}

/* Detach everything, leave self empty, then release the objects (whose
   finalizers may run Python code that then sees an empty, consistent
   index). */
static void
ui_reset(UniqueIndex *self)
{
    otab k = self->keys, v = self->vals;
    kset *ks = self->ksets;
    memset(&self->keys, 0, sizeof(otab));
    memset(&self->vals, 0, sizeof(otab));
    self->ksets = NULL;
    self->ksets_cap = 0;
    self->kset_bytes = 0;
    self->npairs = 0;
    self->nkeys_used = 0;
    if (ks != NULL) {
        for (uint32_t i = 0; i < k.n; i++) {
            if (ks[i].lg)
                PyMem_Free(ks[i].u.slots);
        }
        PyMem_Free(ks);
    }
    tab_free(k.slots, k.mask + 1, sizeof(oslot));
    tab_free(v.slots, v.mask + 1, sizeof(oslot));
    for (uint32_t i = 0; i < k.n; i++)
        Py_DECREF(k.ent[i].obj);
    PyMem_Free(k.ent);
    for (uint32_t i = 0; i < v.n; i++)
        Py_DECREF(v.ent[i].obj);
    PyMem_Free(v.ent);
}

static PyObject *
ui_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 ||
        (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "UniqueIndex() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);    /* zero-filled: empty tables */
}

static int
ui_traverse(UniqueIndex *self, visitproc visit, void *arg)
{
    for (uint32_t i = 0; i < self->keys.n; i++)
        Py_VISIT(self->keys.ent[i].obj);
    for (uint32_t i = 0; i < self->vals.n; i++)
        Py_VISIT(self->vals.ent[i].obj);
    return 0;
}

static int
ui_clear_gc(UniqueIndex *self)
{
    ui_reset(self);
    return 0;
}

static void
ui_dealloc(UniqueIndex *self)
{
    PyObject_GC_UnTrack(self);
    Py_TRASHCAN_BEGIN(self, ui_dealloc)
    ui_reset(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
    Py_TRASHCAN_END
}

/* Attach `applied` to the pending exception (best effort). */
static void
set_applied(Py_ssize_t applied)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v != NULL) {
        if (tb != NULL)
            PyException_SetTraceback(v, tb);
        PyObject *n = PyLong_FromSsize_t(applied);
        if (n == NULL || PyObject_SetAttrString(v, "applied", n) < 0)
            PyErr_Clear();
        Py_XDECREF(n);
    }
    PyErr_Restore(t, v, tb);
}

static const char *
article(const char *name)
{
    return name[0] && strchr("aeiouAEIOU", name[0]) ? "an" : "a";
}

static void
raise_missing(Py_ssize_t i, PyObject *field)
{
    if (PyUnicode_Check(field))
        PyErr_Format(MissingFieldError, "event %zd has no \"%U\" field", i,
                     field);
    else
        PyErr_Format(MissingFieldError, "event %zd has no %R field", i,
                     field);
}

/* One event of the chunk being processed by add_events(). */
typedef struct {
    PyObject *k, *v;        /* strong references while in the chunk */
    Py_hash_t hk, hv;
    uint32_t kid, vid;
    size_t kslot, vslot;    /* written by B (see otab_prefetch_candidate) */
} pending;

/* Prefetch the slot where `h` starts probing. */
static inline void
otab_prefetch_slot(const otab *t, Py_hash_t h)
{
    if (t->slots != NULL)
        UI_PREFETCH_R(&t->slots[(size_t)mix64((uint64_t)h) & t->mask]);
}

/* Prefetch the object a lookup of `o` will compare with first (its slot
   should be in cache by now).  Returns the slot index looked at: the caller
   stores it, which keeps the compiler from deleting the loop (GCC drops a
   loop whose only effect is __builtin_prefetch). */
static inline size_t
otab_prefetch_candidate(const otab *t, PyObject *o, Py_hash_t h)
{
    if (t->slots == NULL)
        return 0;
    uint64_t m = mix64((uint64_t)h);
    uint32_t tag = (uint32_t)(m >> 32);
    size_t i = (size_t)m & t->mask;
    for (int n = 0; n < 8; n++) {
        const oslot *s = &t->slots[i];
        if (s->obj == NULL)
            return i;
        if (s->tag == tag) {
            if (s->obj != o) {
                /* header and data of a small object */
                UI_PREFETCH_R((const char *)s->obj);
                UI_PREFETCH_R((const char *)s->obj + 63);
            }
            return i;
        }
        i = (i + 1) & t->mask;
    }
    return i;
}

/* (A) Take up to CHUNK events from `start`, fetch their fields (new
   references) and hash them.  Returns how many were taken; on error
   (exception set) *failed = 1 and the events before the bad one are
   returned. */
static Py_ssize_t
gather_chunk(UniqueIndex *self, PyObject *events, Py_ssize_t start,
             PyObject *kf, PyObject *vf, pending *buf, int *failed)
{
    Py_ssize_t m = 0;
    Py_ssize_t i = start;
    while (m < CHUNK && i < PyList_GET_SIZE(events)) {
        PyObject *ev = PyList_GET_ITEM(events, i);
        if (UI_UNLIKELY(!PyDict_Check(ev))) {
            const char *tn = Py_TYPE(ev)->tp_name;
            PyErr_Format(PyExc_TypeError, "event %zd is %s %.200s, not a map",
                         i, article(tn), tn);
            *failed = 1;
            break;
        }
        /* Looking the fields up can run Python code (a field's __eq__)
           that could drop the list's or the event's references. */
        Py_INCREF(ev);
        PyObject *k = PyDict_GetItemWithError(ev, kf);
        if (UI_UNLIKELY(k == NULL)) {
            if (!PyErr_Occurred())
                raise_missing(i, kf);
            Py_DECREF(ev);
            *failed = 1;
            break;
        }
        Py_INCREF(k);
        PyObject *v = PyDict_GetItemWithError(ev, vf);
        if (UI_UNLIKELY(v == NULL)) {
            if (!PyErr_Occurred())
                raise_missing(i, vf);
            Py_DECREF(k);
            Py_DECREF(ev);
            *failed = 1;
            break;
        }
        Py_INCREF(v);
        Py_DECREF(ev);
        Py_hash_t hk = PyObject_Hash(k);
        Py_hash_t hv = (hk == -1) ? -1 : PyObject_Hash(v);
        if (UI_UNLIKELY(hv == -1)) {
            Py_DECREF(k);
            Py_DECREF(v);
            *failed = 1;
            break;
        }
        otab_prefetch_slot(&self->keys, hk);
        otab_prefetch_slot(&self->vals, hv);
        buf[m].k = k;
        buf[m].v = v;
        buf[m].hk = hk;
        buf[m].hv = hv;
        m++;
        i++;
    }
    return m;
}

/* (D) Add the resolved pairs buf[0..m), in order.  Returns how many were
   applied: m, or fewer with MemoryError set. */
static Py_ssize_t
insert_chunk(UniqueIndex *self, pending *buf, Py_ssize_t m, size_t *added)
{
    for (Py_ssize_t j = 0; j < m; j++)
        kset_prefetch(&self->ksets[buf[j].kid], buf[j].vid);
    for (Py_ssize_t j = 0; j < m; j++) {
        int r = add_pair(self, buf[j].kid, buf[j].vid);
        if (UI_UNLIKELY(r < 0))
            return j;
        *added += (size_t)r;
    }
    return m;
}

static inline void
drop_error(PyObject **et, PyObject **ev, PyObject **etb)
{
    Py_CLEAR(*et);
    Py_CLEAR(*ev);
    Py_CLEAR(*etb);
}

static PyObject *
ui_add_events(UniqueIndex *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "add_events() takes exactly 3 arguments (%zd given)",
                     nargs);
        set_applied(0);
        return NULL;
    }
    PyObject *events = args[0], *kf = args[1], *vf = args[2];
    if (!PyList_Check(events)) {
        PyErr_Format(PyExc_TypeError, "events must be a list, not %.200s",
                     Py_TYPE(events)->tp_name);
        set_applied(0);
        return NULL;
    }
    if (check_not_busy(self) < 0) {
        set_applied(0);
        return NULL;
    }
    pending buf[CHUNK];
    size_t added = 0;
    Py_ssize_t applied = 0;    /* == index of the next event */
    int failed = 0;

    self->busy++;
    Py_INCREF(events);
    while (!failed && applied < PyList_GET_SIZE(events)) {
        /* A: fetch + hash (Python code may run; the list may change). */
        Py_ssize_t m = gather_chunk(self, events, applied, kf, vf, buf,
                                    &failed);
        PyObject *et = NULL, *ev = NULL, *etb = NULL;
        if (failed)
            PyErr_Fetch(&et, &ev, &etb);
        /* B: prefetch what C will compare with. */
        if (self->keys.mask >= KEYS_PREFETCH_MIN) {
            for (Py_ssize_t j = 0; j < m; j++)
                buf[j].kslot = otab_prefetch_candidate(
                    &self->keys, buf[j].k, buf[j].hk);
        }
        for (Py_ssize_t j = 0; j < m; j++)
            buf[j].vslot = otab_prefetch_candidate(&self->vals, buf[j].v,
                                                   buf[j].hv);
        /* C: resolve the ids, in order (__eq__ may run). */
        Py_ssize_t r = 0;
        for (; r < m; r++) {
            int is_new;
            int64_t kid = -1, vid = -1;
            if (ksets_reserve(self) == 0) {
                kid = otab_intern(&self->keys, buf[r].k, buf[r].hk, &is_new);
                if (kid >= 0) {
                    UI_PREFETCH_R(&self->ksets[kid]);
                    vid = otab_intern(&self->vals, buf[r].v, buf[r].hv,
                                      &is_new);
                }
            }
            if (UI_UNLIKELY(vid < 0))
                break;
            buf[r].kid = (uint32_t)kid;
            buf[r].vid = (uint32_t)vid;
        }
        if (r < m) {
            /* this error is at an earlier event than the pending one */
            drop_error(&et, &ev, &etb);
            PyErr_Fetch(&et, &ev, &etb);
            failed = 1;
        }
        /* (no error is pending while arbitrary finalizers may run) */
        for (Py_ssize_t j = 0; j < m; j++) {
            Py_DECREF(buf[j].k);
            Py_DECREF(buf[j].v);
        }
        /* D: insert the pairs (no Python code runs). */
        Py_ssize_t done = insert_chunk(self, buf, r, &added);
        applied += done;
        if (done < r) {
            drop_error(&et, &ev, &etb);
            PyErr_Fetch(&et, &ev, &etb);
            failed = 1;
        }
        if (failed)
            PyErr_Restore(et, ev, etb);
    }
    Py_DECREF(events);
    self->busy--;
    if (failed) {
        set_applied(applied);
        return NULL;
    }
    return PyLong_FromSize_t(added);
}

/* add(k, v) on references the caller holds: 1 new, 0 present, -1 error
   (RuntimeError if busy, the TypeError of hash(), __eq__'s exception,
   MemoryError, OverflowError; nothing is added then, though the key may
   be interned). */
static int
add_one(UniqueIndex *self, PyObject *k, PyObject *v, uint32_t *kid_out)
{
    if (check_not_busy(self) < 0)
        return -1;
    int r = -1;
    self->busy++;
    Py_hash_t hk = PyObject_Hash(k);
    Py_hash_t hv = (hk == -1) ? -1 : PyObject_Hash(v);
    if (hv != -1 && ksets_reserve(self) == 0) {
        int is_new;
        int64_t kid = otab_intern(&self->keys, k, hk, &is_new);
        int64_t vid = -1;
        if (kid >= 0)
            vid = otab_intern(&self->vals, v, hv, &is_new);
        if (vid >= 0)
            r = add_pair(self, (uint32_t)kid, (uint32_t)vid);
        if (r >= 0 && kid_out != NULL)
            *kid_out = (uint32_t)kid;
    }
    self->busy--;
    return r;
}

static PyObject *
ui_add(UniqueIndex *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "add() takes exactly 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *k = args[0], *v = args[1];
    Py_INCREF(k);
    Py_INCREF(v);
    int r = add_one(self, k, v, NULL);
    Py_DECREF(k);
    Py_DECREF(v);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* The cached hash of an exact str, or -1. */
static inline Py_hash_t
str_cached_hash(PyObject *o)
{
    return PyUnicode_CheckExact(o) ? ((PyASCIIObject *)o)->hash : -1;
}

/* add_one() for a key already interned as `kid`: the same, without
   looking the key up again. */
static int
add_value(UniqueIndex *self, uint32_t kid, PyObject *v)
{
    if (check_not_busy(self) < 0)
        return -1;
    int r = -1;
    self->busy++;
    Py_hash_t hv = str_cached_hash(v);    /* what PyObject_Hash returns */
    if (hv == -1)
        hv = PyObject_Hash(v);
    if (hv != -1) {
        int is_new;
        int64_t vid = otab_intern(&self->vals, v, hv, &is_new);
        if (vid >= 0) {
            kset *ks = &self->ksets[kid];
            r = kset_add_fast(ks, (uint32_t)vid);
            if (r < 0)
                r = add_pair(self, kid, (uint32_t)vid);
            else if (r > 0) {
                self->npairs++;
                if (ks->count == 1)
                    self->nkeys_used++;
            }
        }
    }
    self->busy--;
    return r;
}

/* Whether hashing `o` and comparing it with an object of the same kind
   runs no Python code and has no effect (so may be skipped). */
static inline int
plain_key(PyObject *o)
{
    return PyUnicode_CheckExact(o) || PyLong_CheckExact(o);
}

/* `a, b = item`, with the errors of Python's unpacking.  New references. */
static int
unpack2(PyObject *item, PyObject **a, PyObject **b)
{
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        *a = Py_NewRef(PyTuple_GET_ITEM(item, 0));
        *b = Py_NewRef(PyTuple_GET_ITEM(item, 1));
        return 0;
    }
    *a = *b = NULL;
    PyObject *it = PyObject_GetIter(item);
    if (it == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError) &&
            Py_TYPE(item)->tp_iter == NULL && !PySequence_Check(item)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "cannot unpack non-iterable %.200s object",
                         Py_TYPE(item)->tp_name);
        }
        return -1;
    }
    PyObject *extra = NULL;
    *a = PyIter_Next(it);
    if (*a != NULL)
        *b = PyIter_Next(it);
    if (*b == NULL) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError,
                         "not enough values to unpack (expected 2, got %d)",
                         *a == NULL ? 0 : 1);
        goto error;
    }
    extra = PyIter_Next(it);
    if (extra != NULL) {
        Py_DECREF(extra);
        PyErr_SetString(PyExc_ValueError,
                        "too many values to unpack (expected 2)");
        goto error;
    }
    if (PyErr_Occurred())
        goto error;
    Py_DECREF(it);
    return 0;
error:
    Py_CLEAR(*a);
    Py_CLEAR(*b);
    Py_DECREF(it);
    return -1;
}

/* How far update() works ahead in a list of values, in list positions:
   prefetch the object (refcount and type; a str's hash and data), hash it
   if it is a fresh str, prefetch its value-table slot, then the stored
   object it will be compared with.  (Tuned on a million pairs: with fresh
   strings, as decoded from a snapshot, there are some 5 cache misses per
   value, and the limit is how many can be in flight.) */
#ifndef UPD_AHEAD_OBJ
#define UPD_AHEAD_OBJ 16
#endif
#ifndef UPD_AHEAD_HASH
#define UPD_AHEAD_HASH 12
#endif
#ifndef UPD_AHEAD_SLOT
#define UPD_AHEAD_SLOT 8
#endif
#ifndef UPD_AHEAD_CAND
#define UPD_AHEAD_CAND 4
#endif

/* Hash a never-hashed exact str ahead of its add: for a ready exact str,
   hashing runs no Python code, cannot fail, and caches what the add would
   compute anyway. */
UI_ALWAYS_INLINE void
hash_str_ahead(PyObject *o)
{
    if (PyUnicode_CheckExact(o) && UI_UNLIKELY(((PyASCIIObject *)o)->hash == -1)
        && PyUnicode_IS_READY(o))
        (void)PyObject_Hash(o);
}

/* Prefetch the value-table slot of an exact str already hashed. */
UI_ALWAYS_INLINE void
prefetch_str_slot(const otab *t, PyObject *o)
{
    Py_hash_t h = str_cached_hash(o);
    if (t->slots != NULL && h != -1)
        UI_PREFETCH_R(&t->slots[(size_t)mix64((uint64_t)h) & t->mask]);
}

/* Add (key, value) for each value of the iterable `values`; *added counts
   the new pairs.  Returns 0 or -1 (exception set; the pairs before the bad
   one stay added). */
static int
update_key(UniqueIndex *self, PyObject *key, PyObject *values, size_t *added)
{
    if (PyList_CheckExact(values) || PyTuple_CheckExact(values)) {
        /* What their iterators do, without them: the size and items are
           read again at each step (Python code run by __eq__ or by a
           finalizer may change a list).  Working ahead looks at the list
           as it is now, when it holds the objects, and has no visible
           effect. */
        volatile size_t sink = 0;    /* keeps GCC from dropping a prefetch */
        /* Once the key is interned as `kid`, by `kobj` (held), looking it
           up again finds `kid` as long as ent[kid] is still `kobj`; for a
           plain key and plain kobj, skipping the lookup is unobservable. */
        PyObject *kobj = NULL;
        uint32_t kid = 0;
        int r = 0;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(values); i++) {
            PyObject **ob = PySequence_Fast_ITEMS(values);
            Py_ssize_t n = PySequence_Fast_GET_SIZE(values);
            if (i + UPD_AHEAD_OBJ < n) {
                /* refcount, type and (a str's) hash: maybe 2 lines */
                const char *o = (const char *)ob[i + UPD_AHEAD_OBJ];
                UI_PREFETCH(o);
                UI_PREFETCH_R(o + offsetof(PyASCIIObject, hash));
            }
            if (i + UPD_AHEAD_HASH < n)
                hash_str_ahead(ob[i + UPD_AHEAD_HASH]);
            if (i + UPD_AHEAD_SLOT < n)
                prefetch_str_slot(&self->vals, ob[i + UPD_AHEAD_SLOT]);
            if (i + UPD_AHEAD_CAND < n) {
                PyObject *o = ob[i + UPD_AHEAD_CAND];
                Py_hash_t h = str_cached_hash(o);
                if (h != -1)
                    sink = otab_prefetch_candidate(&self->vals, o, h);
            }
            PyObject *v = ob[i];
            Py_INCREF(v);
            if (kobj != NULL && kid < self->keys.n &&
                self->keys.ent[kid].obj == kobj) {
                r = add_value(self, kid, v);
            }
            else {
                r = add_one(self, key, v, &kid);
                if (r >= 0 && kobj == NULL && plain_key(key) &&
                    plain_key(self->keys.ent[kid].obj))
                    kobj = Py_NewRef(self->keys.ent[kid].obj);
            }
            Py_DECREF(v);
            if (r < 0)
                break;
            *added += (size_t)r;
            if (UI_UNLIKELY(i == 0)) {
                /* Size a new key's table for the whole list at once
                   (rather than doubling it 8 times for 1000 values);
                   best effort.  Python code may have run: re-read. */
                Py_ssize_t left = PySequence_Fast_GET_SIZE(values) - 1;
                if (kid < self->keys.n && left > 0 && self->busy == 0)
                    kset_presize(&self->ksets[kid], (size_t)left,
                                 &self->kset_bytes);
            }
        }
        (void)sink;
        Py_XDECREF(kobj);
        return r < 0 ? -1 : 0;
    }
    PyObject *it = PyObject_GetIter(values);
    if (it == NULL)
        return -1;
    PyObject *v;
    while ((v = PyIter_Next(it)) != NULL) {
        int r = add_one(self, key, v, NULL);
        Py_DECREF(v);
        if (r < 0) {
            Py_DECREF(it);
            return -1;
        }
        *added += (size_t)r;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

/* update(items): what the Python version does,
       sum(add(k, v) for k, values in items.items() for v in values)
   pair by pair, in that order, with add()'s checks and errors.  The busy
   guard is held for each pair, not across the iteration: as with the
   Python version, an iterator may add to this index. */
static PyObject *
ui_update(UniqueIndex *self, PyObject *items)
{
    PyObject *meth = PyObject_GetAttrString(items, "items");
    if (meth == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError,
                         "update() argument must be a mapping with an "
                         "items() method, not %.200s",
                         Py_TYPE(items)->tp_name);
        }
        return NULL;
    }
    PyObject *view = PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    if (view == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(view);
    Py_DECREF(view);
    if (it == NULL)
        return NULL;
    size_t added = 0;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        PyObject *key, *values;
        int r = unpack2(item, &key, &values);
        Py_DECREF(item);
        if (r == 0) {
            r = update_key(self, key, values, &added);
            Py_DECREF(key);
            Py_DECREF(values);
        }
        if (r < 0) {
            Py_DECREF(it);
            return NULL;
        }
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(added);
}

/* Lookup without insertion: id, OT_NOTFOUND or OT_ERROR. */
static int64_t
lookup_id(UniqueIndex *self, otab *t, PyObject *o)
{
    Py_hash_t h = PyObject_Hash(o);
    if (h == -1)
        return OT_ERROR;
    size_t ins;
    self->busy++;
    int64_t id = otab_find(t, o, h, &ins);
    self->busy--;
    return id;
}

static PyObject *
ui_contains(UniqueIndex *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "contains() takes exactly 2 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    /* Both must be hashable, even when the key is unknown. */
    Py_hash_t hk = PyObject_Hash(args[0]);
    if (hk == -1)
        return NULL;
    Py_hash_t hv = PyObject_Hash(args[1]);
    if (hv == -1)
        return NULL;
    size_t ins;
    int r = 0;
    self->busy++;
    int64_t kid = otab_find(&self->keys, args[0], hk, &ins);
    int64_t vid = OT_NOTFOUND;
    if (kid >= 0)
        vid = otab_find(&self->vals, args[1], hv, &ins);
    if (vid >= 0)
        r = kset_contains(&self->ksets[kid], (uint32_t)vid);
    self->busy--;
    if (kid == OT_ERROR || vid == OT_ERROR)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *
ui_count(UniqueIndex *self, PyObject *key)
{
    int64_t kid = lookup_id(self, &self->keys, key);
    if (kid == OT_ERROR)
        return NULL;
    if (kid < 0)
        return PyLong_FromLong(0);
    return PyLong_FromUnsignedLong(self->ksets[kid].count);
}

static Py_ssize_t
ui_len(UniqueIndex *self)
{
    return (Py_ssize_t)self->npairs;
}

static PyObject *
ui_key_count(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSize_t(self->nkeys_used);
}

static PyObject *
ui_counts(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    self->busy++;
    for (uint32_t kid = 0; kid < self->keys.n; kid++) {
        uint32_t c = self->ksets[kid].count;
        if (c == 0)
            continue;
        PyObject *n = PyLong_FromUnsignedLong(c);
        if (n == NULL || PyDict_SetItem(d, self->keys.ent[kid].obj, n) < 0) {
            Py_XDECREF(n);
            Py_DECREF(d);
            self->busy--;
            return NULL;
        }
        Py_DECREF(n);
    }
    self->busy--;
    return d;
}

static PyObject *
ui_values(UniqueIndex *self, PyObject *key)
{
    int64_t kid = lookup_id(self, &self->keys, key);
    if (kid == OT_ERROR)
        return NULL;
    if (kid < 0)
        return PyList_New(0);
    /* PyList_New can run Python code (GC): hold the guard so that the
       key's values cannot change meanwhile. */
    self->busy++;
    PyObject *list = PyList_New((Py_ssize_t)self->ksets[kid].count);
    if (list != NULL)
        kset_fill_list(&self->ksets[kid], self->vals.ent, list);
    self->busy--;
    return list;
}

static PyObject *
ui_items(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    /* Allocating can run Python code (GC, finalizers): hold the guard so
       that nothing is added or cleared while we walk the tables. */
    self->busy++;
    for (uint32_t kid = 0; kid < self->keys.n; kid++) {
        const kset *ks = &self->ksets[kid];
        if (ks->count == 0)
            continue;
        PyObject *list = PyList_New((Py_ssize_t)ks->count);
        if (list == NULL)
            goto error;
        kset_fill_list(ks, self->vals.ent, list);
        int r = PyDict_SetItem(d, self->keys.ent[kid].obj, list);
        Py_DECREF(list);
        if (r < 0)
            goto error;
    }
    self->busy--;
    return d;
error:
    self->busy--;
    Py_DECREF(d);
    return NULL;
}

static PyObject *
ui_clear(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    if (check_not_busy(self) < 0)
        return NULL;
    ui_reset(self);
    Py_RETURN_NONE;
}

static PyObject *
ui_sizeof(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    size_t size = (size_t)Py_TYPE(self)->tp_basicsize;
    size += otab_native_size(&self->keys);
    size += otab_native_size(&self->vals);
    size += self->ksets_cap * sizeof(kset);
    size += self->kset_bytes;
    return PyLong_FromSize_t(size);
}

/* Copy the per-key sets of `src` into *out (NULL if it has none).
   Returns 0, or -1 with MemoryError set and nothing allocated. */
static int
ksets_dup(const UniqueIndex *src, kset **out)
{
    *out = NULL;
    if (src->ksets == NULL)
        return 0;
    kset *ks = PyMem_Malloc(src->ksets_cap * sizeof(kset));
    if (ks == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    /* Entries from keys.n on are zero (ksets_reserve). */
    memcpy(ks, src->ksets, src->ksets_cap * sizeof(kset));
    for (uint32_t i = 0; i < src->keys.n; i++) {
        if (ks[i].lg == 0)
            continue;
        size_t bytes = ((size_t)1 << ks[i].lg) * sizeof(uint32_t);
        uint32_t *t = PyMem_Malloc(bytes);
        if (t == NULL) {
            for (uint32_t j = 0; j < i; j++) {
                if (ks[j].lg)
                    PyMem_Free(ks[j].u.slots);
            }
            PyMem_Free(ks);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(t, src->ksets[i].u.slots, bytes);
        ks[i].u.slots = t;
    }
    *out = ks;
    return 0;
}

/* Whether `o` is a native index that holds nothing and is not in use. */
static int
is_pristine(PyObject *o)
{
    if (!PyObject_TypeCheck(o, &UniqueIndex_Type))
        return 0;
    UniqueIndex *u = (UniqueIndex *)o;
    return u->keys.slots == NULL && u->vals.slots == NULL &&
           u->ksets == NULL && u->busy == 0;
}

/* copy(): what the Python version does -- new = type(self)(); then
   new.update(self.items()) -- done structurally when `new` is an empty
   native index (always, unless a subclass's __new__/__init__ says
   otherwise): the tables are duplicated and each object gets one more
   reference per table that holds it, as in self.  The copy shares the
   key and value objects, and nothing else, with self. */
static PyObject *
ui_copy(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *res = PyObject_CallNoArgs((PyObject *)Py_TYPE(self));
    if (res == NULL)
        return NULL;
    if (res == (PyObject *)self || !is_pristine(res)) {
        PyObject *items = ui_items(self, NULL);
        PyObject *r = NULL;
        if (items != NULL) {
            r = PyObject_CallMethod(res, "update", "(O)", items);
            Py_DECREF(items);
        }
        if (r == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        Py_DECREF(r);
        return res;
    }
    UniqueIndex *new = (UniqueIndex *)res;
    otab keys, vals;
    kset *ksets;
    /* No Python code runs from here to the end (nothing is released,
       nothing is allocated from the GC); the guard is for safety. */
    self->busy++;
    if (otab_dup(&keys, &self->keys) < 0)
        goto error;
    if (otab_dup(&vals, &self->vals) < 0) {
        otab_free_arrays(&keys);
        goto error;
    }
    if (ksets_dup(self, &ksets) < 0) {
        otab_free_arrays(&vals);
        otab_free_arrays(&keys);
        goto error;
    }
    for (uint32_t i = 0; i < keys.n; i++)
        Py_INCREF(keys.ent[i].obj);
    for (uint32_t i = 0; i < vals.n; i++)
        Py_INCREF(vals.ent[i].obj);
    new->keys = keys;
    new->vals = vals;
    new->ksets = ksets;
    new->ksets_cap = self->ksets_cap;
    new->kset_bytes = self->kset_bytes;
    new->npairs = self->npairs;
    new->nkeys_used = self->nkeys_used;
    self->busy--;
    return res;
error:
    self->busy--;
    Py_DECREF(res);    /* still empty */
    return NULL;
}

/* ------------------------------------------------------------------ */
/* export() / from_export()                                            */
/* ------------------------------------------------------------------ */

static inline uint32_t
load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline unsigned char *
store_le32(unsigned char *p, uint32_t x)
{
    p[0] = (unsigned char)x;
    p[1] = (unsigned char)(x >> 8);
    p[2] = (unsigned char)(x >> 16);
    p[3] = (unsigned char)(x >> 24);
    return p + 4;
}

/* export() -> (keys, values, pairs): the keys with at least one value, in
   id order; every value of the value table, in id order (the index of a
   value is its id); pairs = for each key, a little-endian uint32 count
   then that many uint32 value indexes. */
static PyObject *
ui_export(UniqueIndex *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *keys = NULL, *vals = NULL, *pairs = NULL, *res;
    size_t nwords = self->nkeys_used + self->npairs;
    if (nwords > (size_t)PY_SSIZE_T_MAX / 4) {
        PyErr_NoMemory();
        return NULL;
    }
    /* Allocating can run Python code (GC, finalizers): hold the guard so
       that nothing changes until the copy is made. */
    self->busy++;
    /* Scratch room for the largest key table: its values are gathered
       there without a branch per slot (the slots are about half full, in
       no order: a branch would be mispredicted every other slot). */
    size_t maxcap = 0;
    for (uint32_t kid = 0; kid < self->keys.n; kid++) {
        if (self->ksets[kid].lg && ((size_t)1 << self->ksets[kid].lg) > maxcap)
            maxcap = (size_t)1 << self->ksets[kid].lg;
    }
    uint32_t *scratch = PyMem_Malloc((maxcap + 1) * sizeof(uint32_t));
    if (scratch == NULL) {
        self->busy--;
        PyErr_NoMemory();
        return NULL;
    }
    keys = PyList_New((Py_ssize_t)self->nkeys_used);
    vals = keys ? PyList_New((Py_ssize_t)self->vals.n) : NULL;
    pairs = vals ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(nwords * 4))
                 : NULL;
    res = pairs ? PyTuple_New(3) : NULL;
    if (res == NULL) {
        self->busy--;
        PyMem_Free(scratch);
        Py_XDECREF(keys);
        Py_XDECREF(vals);
        Py_XDECREF(pairs);
        return NULL;
    }
    /* No Python code runs from here on. */
    for (uint32_t i = 0; i < self->vals.n; i++) {
        PyObject *o = self->vals.ent[i].obj;
        Py_INCREF(o);
        PyList_SET_ITEM(vals, (Py_ssize_t)i, o);
    }
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(pairs);
    Py_ssize_t k = 0;
    for (uint32_t kid = 0; kid < self->keys.n; kid++) {
        const kset *ks = &self->ksets[kid];
        if (ks->count == 0)
            continue;
        PyObject *o = self->keys.ent[kid].obj;
        Py_INCREF(o);
        PyList_SET_ITEM(keys, k, o);
        k++;
        w = store_le32(w, ks->count);
        if (ks->lg == 0) {
            for (uint32_t j = 0; j < ks->count; j++)
                w = store_le32(w, ks->u.inl[j]);
            continue;
        }
        size_t cap = (size_t)1 << ks->lg, m = 0;
        const uint32_t *slots = ks->u.slots;
        for (size_t j = 0; j < cap; j++) {
            uint32_t x = slots[j];
            scratch[m] = x - 1;
            m += (x != 0);
        }
        assert(m == ks->count);
        for (size_t j = 0; j < m; j++)
            w = store_le32(w, scratch[j]);
    }
    PyMem_Free(scratch);
    assert(k == (Py_ssize_t)self->nkeys_used);
    assert(w == (unsigned char *)PyBytes_AS_STRING(pairs) + nwords * 4);
    self->busy--;
    PyTuple_SET_ITEM(res, 0, keys);
    PyTuple_SET_ITEM(res, 1, vals);
    PyTuple_SET_ITEM(res, 2, pairs);
    return res;
}

/* Check the layout of `pairs` against nk keys and nv values: ValueError
   unless every count fits and every index is < nv, with no byte left. */
static int
check_pairs(const unsigned char *p, size_t len, Py_ssize_t nk, Py_ssize_t nv)
{
    size_t pos = 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (len - pos < 4) {
            PyErr_Format(PyExc_ValueError,
                         "pairs is truncated: no count for key %zd at byte "
                         "%zu of %zu", i, pos, len);
            return -1;
        }
        uint32_t n = load_le32(p + pos);
        pos += 4;
        if (n > (len - pos) / 4) {
            PyErr_Format(PyExc_ValueError,
                         "pairs: the count of key %zd (%lu) goes past the "
                         "end (%zu bytes left)", i, (unsigned long)n,
                         len - pos);
            return -1;
        }
        for (uint32_t j = 0; j < n; j++, pos += 4) {
            uint32_t x = load_le32(p + pos);
            if ((size_t)x >= (size_t)nv) {
                PyErr_Format(PyExc_ValueError,
                             "pairs: value index %lu of key %zd is out of "
                             "range (%zd values)", (unsigned long)x, i, nv);
                return -1;
            }
        }
    }
    if (pos != len) {
        PyErr_Format(PyExc_ValueError,
                     "pairs has %zu trailing bytes after the entries of its "
                     "%zd keys", len - pos, nk);
        return -1;
    }
    return 0;
}

/* Hash every item of the tuple into h[] (TypeError if one is not
   hashable). */
static int
hash_all(PyObject *tup, Py_hash_t *h)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tup); i++) {
        PyObject *o = PyTuple_GET_ITEM(tup, i);
        Py_hash_t x = str_cached_hash(o);
        if (x == -1) {
            x = PyObject_Hash(o);
            if (x == -1)
                return -1;
        }
        h[i] = x;
    }
    return 0;
}

/* Fill the empty native index `u` from checked data: add(key, value) for
   each pair, in order, with each key and value looked up once. */
static int
fill_from_export(UniqueIndex *u, PyObject *keys, PyObject *vals,
                 const Py_hash_t *kh, const Py_hash_t *vh,
                 const unsigned char *p, size_t npairs)
{
    Py_ssize_t nk = PyTuple_GET_SIZE(keys), nv = PyTuple_GET_SIZE(vals);
    uint32_t *vmap = PyMem_Malloc((nv ? (size_t)nv : 1) * sizeof(uint32_t));
    if (vmap == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(vmap, 0xFF, (size_t)nv * sizeof(uint32_t));   /* not yet seen */
    int ret = -1;
    u->busy++;
    /* best-effort presizing */
    otab_reserve(&u->keys, (size_t)nk);
    otab_reserve(&u->vals, (size_t)nv < npairs ? (size_t)nv : npairs);
    size_t pos = 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        uint32_t n = load_le32(p + pos);
        pos += 4;
        if (n == 0)
            continue;
        int is_new;
        if (ksets_reserve(u) < 0)
            goto done;
        int64_t kid = otab_intern(&u->keys, PyTuple_GET_ITEM(keys, i), kh[i],
                                  &is_new);
        if (kid < 0)
            goto done;
        kset *ks = &u->ksets[kid];
        kset_presize(ks, n, &u->kset_bytes);
        for (uint32_t j = 0; j < n; j++, pos += 4) {
            uint32_t x = load_le32(p + pos);
            uint32_t vid = vmap[x];
            if (vid == UINT32_MAX) {
                int64_t r = otab_intern(&u->vals, PyTuple_GET_ITEM(vals, x),
                                        vh[x], &is_new);
                if (r < 0)
                    goto done;
                vmap[x] = vid = (uint32_t)r;
            }
            int r = kset_add_fast(ks, vid);
            if (r < 0) {
                if (add_pair(u, (uint32_t)kid, vid) < 0)
                    goto done;
            }
            else if (r > 0) {
                u->npairs++;
                if (ks->count == 1)
                    u->nkeys_used++;
            }
        }
    }
    ret = 0;
done:
    u->busy--;
    PyMem_Free(vmap);
    return ret;
}

/* The general case (cls() is not an empty native index): res.add(k, v)
   for each pair, in order. */
static int
add_from_export(PyObject *res, PyObject *keys, PyObject *vals,
                const unsigned char *p)
{
    PyObject *name = PyUnicode_InternFromString("add");
    if (name == NULL)
        return -1;
    size_t pos = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keys); i++) {
        uint32_t n = load_le32(p + pos);
        pos += 4;
        for (uint32_t j = 0; j < n; j++, pos += 4) {
            PyObject *r = PyObject_CallMethodObjArgs(
                res, name, PyTuple_GET_ITEM(keys, i),
                PyTuple_GET_ITEM(vals, load_le32(p + pos)), NULL);
            if (r == NULL) {
                Py_DECREF(name);
                return -1;
            }
            Py_DECREF(r);
        }
    }
    Py_DECREF(name);
    return 0;
}

/* from_export(keys, values, pairs): a new cls() holding the pairs that
   export() described -- the same as cls() then add(key, value) for each
   pair in order (so equal keys or values are merged, the first object
   kept) -- after checking the data, which may come from a file. */
static PyObject *
ui_from_export(PyObject *cls, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "from_export() takes exactly 3 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    const char *names[2] = {"keys", "values"};
    for (int i = 0; i < 2; i++) {
        if (!PyList_Check(args[i])) {
            PyErr_Format(PyExc_TypeError,
                         "from_export(): %s must be a list, not %.200s",
                         names[i], Py_TYPE(args[i])->tp_name);
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *res = NULL;
    Py_hash_t *kh = NULL, *vh = NULL;
    unsigned char *owned = NULL;
    /* Snapshots: hashing and comparing may run Python code. */
    PyObject *keys = PyList_AsTuple(args[0]);
    PyObject *vals = keys ? PyList_AsTuple(args[1]) : NULL;
    if (vals == NULL)
        goto done;
    Py_ssize_t nk = PyTuple_GET_SIZE(keys), nv = PyTuple_GET_SIZE(vals);
    const unsigned char *p = view.buf;
    size_t len = (size_t)view.len;
    if (!PyBytes_Check(args[2])) {
        /* A mutable buffer could change under us (from __hash__/__eq__)
           after the check: work on a private copy. */
        owned = PyMem_Malloc(len ? len : 1);
        if (owned == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(owned, view.buf, len);
        p = owned;
    }
    if (check_pairs(p, len, nk, nv) < 0)
        goto done;
    kh = PyMem_Malloc((nk ? (size_t)nk : 1) * sizeof(Py_hash_t));
    vh = PyMem_Malloc((nv ? (size_t)nv : 1) * sizeof(Py_hash_t));
    if (kh == NULL || vh == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (hash_all(keys, kh) < 0 || hash_all(vals, vh) < 0)
        goto done;
    res = PyObject_CallNoArgs(cls);
    if (res == NULL)
        goto done;
    int r;
    if (is_pristine(res))
        r = fill_from_export((UniqueIndex *)res, keys, vals, kh, vh, p,
                             len / 4 - (size_t)nk);
    else
        r = add_from_export(res, keys, vals, p);
    if (r < 0)
        Py_CLEAR(res);
done:
    PyMem_Free(owned);
    PyMem_Free(kh);
    PyMem_Free(vh);
    Py_XDECREF(keys);
    Py_XDECREF(vals);
    PyBuffer_Release(&view);
    return res;
}

/* __copy__(): self.copy(), as in the Python version. */
static PyObject *
ui_copy_dunder(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyObject_CallMethod(self, "copy", NULL);
}

static PyMethodDef ui_methods[] = {
    {"add_events", (PyCFunction)(void (*)(void))ui_add_events, METH_FASTCALL,
     "add_events(events, key_field, value_field) -> int\n\n"
     "Add the pair (event[key_field], event[value_field]) of each event (a\n"
     "dict) of the list, in order; return the number of new pairs.  On an\n"
     "error the events before the bad one stay applied, and the exception\n"
     "has an int attribute 'applied' (how many were)."},
    {"add", (PyCFunction)(void (*)(void))ui_add, METH_FASTCALL,
     "add(key, value) -> bool: add a pair; True if it was new."},
    {"contains", (PyCFunction)(void (*)(void))ui_contains, METH_FASTCALL,
     "contains(key, value) -> bool"},
    {"count", (PyCFunction)ui_count, METH_O,
     "count(key) -> int: number of distinct values of key (0 if unknown)."},
    {"key_count", (PyCFunction)ui_key_count, METH_NOARGS,
     "key_count() -> int: number of keys with at least one value."},
    {"counts", (PyCFunction)ui_counts, METH_NOARGS,
     "counts() -> dict: key -> number of distinct values."},
    {"values", (PyCFunction)ui_values, METH_O,
     "values(key) -> list: the distinct values of key, in no order."},
    {"items", (PyCFunction)ui_items, METH_NOARGS,
     "items() -> dict: key -> list of its distinct values."},
    {"update", (PyCFunction)ui_update, METH_O,
     "update(items) -> int\n\n"
     "Add every pair of the mapping {key: iterable of values} (what items()\n"
     "returns); return the number of new pairs.  On an error the pairs\n"
     "before the bad one stay added."},
    {"copy", (PyCFunction)ui_copy, METH_NOARGS,
     "copy() -> an independent copy, of the same type."},
    {"export", (PyCFunction)ui_export, METH_NOARGS,
     "export() -> (keys, values, pairs)\n\n"
     "A compact form of the index: the keys (those with a value), the\n"
     "distinct values, and pairs: bytes holding, for each key in order, a\n"
     "little-endian uint32 count n and n little-endian uint32 indexes into\n"
     "values.  from_export() rebuilds the index."},
    {"from_export", (PyCFunction)(void (*)(void))ui_from_export,
     METH_FASTCALL | METH_CLASS,
     "from_export(keys, values, pairs) -> a new index of this class\n\n"
     "The index export() described: the same as cls() then add(key, value)\n"
     "for each pair, in order (equal keys or values are merged, the first\n"
     "kept).  The data is checked: TypeError unless keys and values are\n"
     "lists of hashable objects and pairs is bytes-like, ValueError unless\n"
     "every count and index is in range and pairs has no byte left."},
    {"__copy__", (PyCFunction)ui_copy_dunder, METH_NOARGS,
     "__copy__() -> self.copy()"},
    {"clear", (PyCFunction)ui_clear, METH_NOARGS, "clear() -> None"},
    {"__sizeof__", (PyCFunction)ui_sizeof, METH_NOARGS,
     "Size in bytes, including the native tables (not the keys/values)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods ui_as_sequence = {
    .sq_length = (lenfunc)ui_len,
};

static PyTypeObject UniqueIndex_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bucketly._speedups.UniqueIndex",
    .tp_basicsize = sizeof(UniqueIndex),
    .tp_itemsize = 0,
    .tp_dealloc = (destructor)ui_dealloc,
    .tp_as_sequence = &ui_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_doc = "UniqueIndex()\n\n"
              "The distinct (key, value) pairs seen, counted per key: the\n"
              "semantics of dict[key, set[value]].",
    .tp_traverse = (traverseproc)ui_traverse,
    .tp_clear = (inquiry)ui_clear_gc,
    .tp_methods = ui_methods,
    .tp_new = ui_new,
};

static int
module_exec(PyObject *m)
{
    if (PyType_Ready(&UniqueIndex_Type) < 0)
        return -1;
    Py_INCREF(&UniqueIndex_Type);
    if (PyModule_AddObject(m, "UniqueIndex",
                           (PyObject *)&UniqueIndex_Type) < 0) {
        Py_DECREF(&UniqueIndex_Type);
        return -1;
    }
    /* MissingFieldError(KeyError) with BaseException.__str__, so that
       str(exc) is the plain message rather than KeyError's repr of it. */
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return -1;
    PyObject *str = PyObject_GetAttrString(PyExc_BaseException, "__str__");
    PyObject *doc = PyUnicode_FromString(
        "An event lacks the key or value field (a KeyError whose str() is "
        "the plain message).");
    if (str == NULL || doc == NULL ||
        PyDict_SetItemString(dict, "__str__", str) < 0 ||
        PyDict_SetItemString(dict, "__doc__", doc) < 0) {
        Py_XDECREF(str);
        Py_XDECREF(doc);
        Py_DECREF(dict);
        return -1;
    }
    Py_DECREF(str);
    Py_DECREF(doc);
    if (MissingFieldError == NULL) {
        MissingFieldError = PyErr_NewException(
            "bucketly._speedups.MissingFieldError", PyExc_KeyError, dict);
    }
    Py_DECREF(dict);
    if (MissingFieldError == NULL)
        return -1;
    Py_INCREF(MissingFieldError);
    if (PyModule_AddObject(m, "MissingFieldError", MissingFieldError) < 0) {
        Py_DECREF(MissingFieldError);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * msgpack_objects(data, limit) -> int
 *
 * Counts the MessagePack values in the first value of ``data`` (a map with
 * two entries and a string in one of them counts 4: the map, its two keys,
 * two values... each header is one value), without building any of them:
 * the server calls it before decoding a frame, to refuse one whose decoded
 * form would be far larger than its bytes (an empty map is one byte on the
 * wire and 64 in memory).  It stops as soon as the count passes ``limit``
 * and then returns limit + 1.  Malformed or truncated data returns -1: the
 * decoder that runs next says what is wrong with it.  No recursion: one
 * counter of values still to read, which can never exceed the bytes left
 * (every value takes at least one), so it cannot overflow either.
 * ------------------------------------------------------------------------ */

static PyObject *
speedups_msgpack_objects(PyObject *module, PyObject *const *args,
                         Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError,
                        "msgpack_objects(data, limit) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    const unsigned char *end = p + view.len;
    Py_ssize_t count = 0;
    /* Values announced but not read yet (a map of n entries announces 2n). */
    uint64_t todo = 1;
    Py_ssize_t result;
#define NEED(n) do { if ((size_t)(end - p) < (size_t)(n)) goto bad; } while (0)
#define BE16(q) ((uint64_t)(q)[0] << 8 | (uint64_t)(q)[1])
#define BE32(q) ((uint64_t)(q)[0] << 24 | (uint64_t)(q)[1] << 16 | \
                 (uint64_t)(q)[2] << 8 | (uint64_t)(q)[3])
    while (todo) {
        if (count >= limit) {
            result = limit + 1;
            goto done;
        }
        NEED(1);
        unsigned char b = *p++;
        uint64_t skip = 0, children = 0;
        todo--;
        count++;
        if (b <= 0x7f || b >= 0xe0) {
            /* fixint */
        } else if (b <= 0x8f) {
            children = 2 * (uint64_t)(b & 0x0f);
        } else if (b <= 0x9f) {
            children = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: break;
            case 0xc4: case 0xd9: NEED(1); skip = p[0]; p += 1; break;
            case 0xc5: case 0xda: NEED(2); skip = BE16(p); p += 2; break;
            case 0xc6: case 0xdb: NEED(4); skip = BE32(p); p += 4; break;
            case 0xc7: NEED(2); skip = p[0]; p += 2; break; /* length, type */
            case 0xc8: NEED(3); skip = BE16(p); p += 3; break;
            case 0xc9: NEED(5); skip = BE32(p); p += 5; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: NEED(2); children = BE16(p); p += 2; break;
            case 0xdd: NEED(4); children = BE32(p); p += 4; break;
            case 0xde: NEED(2); children = 2 * BE16(p); p += 2; break;
            case 0xdf: NEED(4); children = 2 * BE32(p); p += 4; break;
            default: goto bad; /* 0xc1: never used */
            }
        }
        NEED(skip);
        p += skip;
        todo += children;
        if (todo > (uint64_t)(end - p))
            goto bad; /* more values announced than bytes left */
    }
    result = count;
    goto done;
bad:
    result = -1;
done:
#undef NEED
#undef BE16
#undef BE32
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(result);
}

static PyMethodDef module_methods[] = {
    {"msgpack_objects", (PyCFunction)(void (*)(void))speedups_msgpack_objects,
     METH_FASTCALL,
     "msgpack_objects(data, limit, /) -> int\n--\n\n"
     "The number of MessagePack values in the first value of data, or\n"
     "limit + 1 once it passes limit, or -1 if data is malformed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "Native helpers for bucketly.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (module_exec(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
