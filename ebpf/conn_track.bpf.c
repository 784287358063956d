// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * grayscope connection tracking: TCP connections with the process that owns them, from tracepoints only.
 *
 * - inet_sock_set_state as a tp_btf program (handle_set_state), or a raw tracepoint where the kernel refuses BTF
 *   tracing programs (handle_set_state_raw); the arguments sk, oldstate, newstate; see set_state
 *     CLOSE -> LISTEN          remember the listener's owner (the listen() caller is `current`) in `listeners`,
 *                              keyed by (netns, family, bound address, port); the one it displaces, in
 *                              `listeners_prev`. Port 0 when listen() is to pick the port (no bind() before it):
 *                              the first connection that finds no other listener moves it to its port
 *     LISTEN -> CLOSE          forget it (only if the entry is this socket's, or one the agent seeded from /proc),
 *                              giving the address back to the listener it displaced if that one still listens
 *     CLOSE -> SYN_SENT        remember the connecting task (it is `current` here) in `conns`
 *     SYN_SENT -> ESTABLISHED  emit ESTABLISHED (client) with the full 4-tuple, now that the port is bound
 *     SYN_RECV -> ESTABLISHED  remember a passive connection and emit ESTABLISHED (server) named after the owner of
 *                              its listener (exact address first, then the wildcard one); `current` is whoever ran
 *                              the softirq, on loopback the *client*, so it is never used here. A socket with an
 *                              entry already (accepted first, or a simultaneous open's SYN_SENT -> SYN_RECV) emits
 *                              that one
 *     * -> CLOSE               emit CLOSED with the duration, then delete the `conns` entry
 * - syscalls:sys_exit_accept4 / sys_exit_accept (attached only when the agent is asked for them)
 *     the returned fd -> struct file -> struct socket -> sk (the tracepoint's skaddr): the accepting task is
 *     `current`, so the server side gets the exact accepting process; emit ACCEPTED. Off by default: enabling any
 *     syscall tracepoint puts every syscall of every task on the node on the tracing slow path.
 *
 * Every `conns` insert is deleted at TCP_CLOSE, every `listeners` and `listeners_prev` insert at LISTEN -> CLOSE.
 * The inserts that may miss their delete (the accept side winning a race with a close, see on_accept_exit; a
 * displaced listener whose key's entry went by eviction) are bounded by the LRU maps, which evict instead of
 * filling up.
 *
 * Every emit counts GS_STAT_PRODUCED and, when the ring buffer is full, GS_STAT_DROPPED, so the reader can check
 * delivered + dropped == produced. An established socket's `conns` entry holds its 4-tuple too (set before its
 * ESTABLISHED is emitted), so after a drop the agent reads from the map the connections whose event was lost. A
 * passive open whose listener is unknown counts GS_STAT_UNOWNED.
 */
#include "vmlinux_min.h"
#include "conn_event.h"

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/* Network namespace filter: the inode of the only netns to watch, 0 for all. Set by the loader
 * (EbpfLoader::override_global), so a new value never needs a recompile. */
const volatile __u32 target_netns = 0;
/* Size of the `events` ring in bytes, set by the loader with the map's size (saves a bpf_ringbuf_query per event). */
const volatile __u32 ring_bytes = 256 * 1024;

/* The pid namespace owners are named in: 0 for the kernel's own (pids as the root namespace sees them), else the
 * device and inode of the agent's (its `/proc/self/ns/pid`), set by the loader when the agent runs in a pid namespace
 * of its own. A sidecar agent shares the pod's (`shareProcessNamespace`): its `/proc` and its socket peers' pids are
 * that namespace's, and the kernel's would name nothing there. */
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

/* The current task's ids (tgid << 32 | pid) in the namespace above; 0 for a task of another namespace (the helper
 * wants the task's own to be that one), which the agent could not look up. */
static __always_inline __u64 current_ids(void)
{
	struct bpf_pidns_info ns = {};

	if (pidns_ino == 0)
		return bpf_get_current_pid_tgid();
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
		return 0;
	return (__u64)ns.tgid << 32 | ns.pid;
}

/* Per-connection state (struct gs_conn_state, conn_event.h), keyed by the struct sock address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct gs_conn_state);
} conns SEC(".maps");

/* Listening sockets by bound address. Sized for every listener of a node; the LRU bounds it if a node has more,
 * and an evicted listener's connections are then emitted without an owner (GS_STAT_UNOWNED). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct gs_listen_key);
	__type(value, struct gs_listen_owner);
} listeners SEC(".maps");

/* The listener a newer one displaced at its key (`listeners` has one entry per address): an older member of a
 * SO_REUSEPORT group, or the listener that holds the port while another socket's listen() fails after its
 * CLOSE -> LISTEN. When the newer one closes, the displaced one gets the key back if it still listens. One level
 * deep; deleted when it is given back, when it closes, and when its key's entry goes. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct gs_listen_key);
	__type(value, struct gs_listen_owner);
} listeners_prev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GS_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The syscall tracepoint context, written from /sys/kernel/tracing/events/syscalls/sys_exit_accept4/format (the
 * vmlinux trace_event_raw_* types make clang emit ctx pointer arithmetic that the verifier refuses). */
struct sys_exit_ctx {
	__u64 common;
	__s32 syscall_nr;
	__s32 pad;
	__s64 ret;
};

/* A 4-tuple in event layout: addresses as two u64 words each (network order bytes). */
struct tuple {
	__u64 laddr[2];
	__u64 raddr[2];
	__u16 family;
	__u16 lport;
	__u16 rport;
};

/* The socket's 4-tuple from `struct sock` (CO-RE reads): local end = bound address and port, remote end = peer,
 * as the inet_sock_set_state trace event shows them. The local port is `inet_sport`, not `skc_num`: a close
 * releases the port (zeroing `skc_num`) before its state change. An AF_INET6 socket keeps its IPv6 addresses
 * (v4-mapped for a dual-stack one). */
static __always_inline void sk_tuple(const struct sock *sk, struct tuple *t)
{
	t->lport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	t->rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (t->family == AF_INET) {
		t->laddr[0] = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		t->raddr[0] = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else {
		bpf_core_read(t->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/* The same reads as direct loads, for the tp_btf program: there the verifier knows `sk` is a `struct sock` (from the
 * tracepoint's BTF prototype), so each field is one load (relocated by CO-RE) instead of a bpf_probe_read_kernel
 * call. `inet_sport` lies beyond `struct sock`, which the verifier refuses to a direct load through a sock
 * pointer, and the IPv6 addresses are 16-byte arrays: those stay probe reads. */
static __always_inline void sk_tuple_direct(const struct sock *sk, struct tuple *t)
{
	t->lport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	t->rport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (t->family == AF_INET) {
		t->laddr[0] = sk->__sk_common.skc_rcv_saddr;
		t->raddr[0] = sk->__sk_common.skc_daddr;
	} else {
		bpf_core_read(t->laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

/* Records the socket's 4-tuple in its `conns` entry once it is established, so the agent can read the connection
 * from the map when the ring buffer dropped its ESTABLISHED event. */
static __always_inline void set_tuple(struct gs_conn_state *st, const struct tuple *t, __u32 netns)
{
	st->netns = netns;
	st->lport = t->lport;
	st->rport = t->rport;
	__builtin_memcpy(st->laddr, t->laddr, sizeof(st->laddr));
	__builtin_memcpy(st->raddr, t->raddr, sizeof(st->raddr));
	st->family = t->family;
}

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u32 sk_netns(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline __u32 sk_netns_direct(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

static __always_inline int netns_wanted(__u32 netns)
{
	return target_netns == 0 || netns == target_netns;
}

/* Fill the owner fields (pid, tid, proc_start_ns, comm) of `st` from the current task; `st` is a gs_conn_state or
 * a gs_listen_owner, which name them alike. */
#define OWN(st)                                                                                                    \
	do {                                                                                                       \
		struct task_struct *task_ = (struct task_struct *)bpf_get_current_task();                         \
		__u64 id_ = current_ids();                                                                         \
		(st)->pid = id_ >> 32;                                                                             \
		(st)->tid = (__u32)id_;                                                                            \
		(st)->proc_start_ns = BPF_CORE_READ(task_, group_leader, start_boottime);                         \
		bpf_get_current_comm((st)->comm, sizeof((st)->comm));                                              \
	} while (0)

static __always_inline void own(struct gs_conn_state *st)
{
	OWN(st);
}

/* OWN with direct loads: bpf_get_current_task_btf() gives the verifier a typed task pointer (tp_btf only). */
#define OWN_DIRECT(st)                                                                                             \
	do {                                                                                                       \
		struct task_struct *task_ = bpf_get_current_task_btf();                                           \
		__u64 id_ = current_ids();                                                                         \
		(st)->pid = id_ >> 32;                                                                             \
		(st)->tid = (__u32)id_;                                                                            \
		(st)->proc_start_ns = task_->group_leader->start_boottime;                                         \
		bpf_get_current_comm((st)->comm, sizeof((st)->comm));                                              \
	} while (0)

/* The `listeners` key of a socket from its local end. */
static __always_inline void listen_key(struct gs_listen_key *k, __u32 netns, const struct tuple *t)
{
	k->netns = netns;
	k->family = t->family;
	k->port = t->lport;
	__builtin_memcpy(k->addr, t->laddr, sizeof(k->addr));
}

/* listen(): the caller owns the listener. BPF_ANY: of several SO_REUSEPORT listeners on one address, the newest
 * names them all (the map has one entry per address); the one it displaces is kept in `listeners_prev`. Deleted
 * at LISTEN -> CLOSE. A socket that listens without bind() has no port yet (listen() picks one after this state
 * change): it is recorded under port 0, and moved to its port by its first connection (listener_of). */
static __always_inline void on_listen(__u64 skaddr, __u32 netns, const struct tuple *t, const int direct)
{
	struct gs_listen_key k = {};
	struct gs_listen_owner o = {}, *old;

	listen_key(&k, netns, t);
	o.skaddr = skaddr;
	if (direct)
		OWN_DIRECT(&o);
	else
		OWN(&o);
	old = bpf_map_lookup_elem(&listeners, &k);
	if (old && old->skaddr != 0 && old->skaddr != skaddr)
		bpf_map_update_elem(&listeners_prev, &k, old, BPF_ANY);
	bpf_map_update_elem(&listeners, &k, &o, BPF_ANY);
}

/* Whether the socket at `skaddr` still listens on `port` (any port for 0: a listener whose port is not known yet):
 * probe reads, since a displaced listener may have closed (and its memory gone to another socket) without this
 * program seeing it as the entry's owner. */
static __always_inline int still_listening(__u64 skaddr, __u16 port)
{
	const struct sock *sk = (const struct sock *)skaddr;

	return BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_LISTEN &&
	       (port == 0 || BPF_CORE_READ(sk, __sk_common.skc_num) == port);
}

/* The listener at `skaddr` is gone from key `k`: if it names the key, the listener it displaced takes the name back
 * when it still listens, else the entry goes; if it is the displaced one, it is forgotten. An entry the agent seeded
 * from /proc (skaddr 0) cannot be told apart, so it goes with the first listener closed at its address. */
static __always_inline void forget_listener(const struct gs_listen_key *k, __u64 skaddr)
{
	struct gs_listen_owner *o, *prev;

	o = bpf_map_lookup_elem(&listeners, k);
	prev = bpf_map_lookup_elem(&listeners_prev, k);
	if (o && (o->skaddr == skaddr || o->skaddr == 0)) {
		if (prev && prev->skaddr != skaddr && still_listening(prev->skaddr, k->port))
			bpf_map_update_elem(&listeners, k, prev, BPF_ANY);
		else
			bpf_map_delete_elem(&listeners, k);
		if (prev)
			bpf_map_delete_elem(&listeners_prev, k);
	} else if (prev && prev->skaddr == skaddr) {
		bpf_map_delete_elem(&listeners_prev, k);
	}
}

/* A listener closed (or its listen() failed). One that listened without bind() may still sit under port 0 (see
 * on_listen): no connection moved it to its port. */
static __always_inline void on_listen_close(__u64 skaddr, __u32 netns, const struct tuple *t)
{
	struct gs_listen_key k = {};

	listen_key(&k, netns, t);
	forget_listener(&k, skaddr);
	if (k.port != 0) {
		k.port = 0;
		forget_listener(&k, skaddr);
	}
}

/* The listener of port `port` among those recorded under port 0 at `k`'s address, moved to its port (the key `k`
 * with `port`) and returned; 0 when neither of them (the newest, and the one it displaced) listens on `port`. */
static __always_inline struct gs_listen_owner *take_unbound(struct gs_listen_key *k, __u16 port)
{
	struct gs_listen_owner *o, *prev, found;

	k->port = 0;
	o = bpf_map_lookup_elem(&listeners, k);
	prev = bpf_map_lookup_elem(&listeners_prev, k);
	if (o && o->skaddr != 0 && still_listening(o->skaddr, port)) {
		found = *o;
		if (prev)
			bpf_map_update_elem(&listeners, k, prev, BPF_ANY);
		else
			bpf_map_delete_elem(&listeners, k);
	} else if (prev && prev->skaddr != 0 && still_listening(prev->skaddr, port)) {
		found = *prev;
	} else {
		return 0;
	}
	if (prev)
		bpf_map_delete_elem(&listeners_prev, k);
	k->port = port;
	bpf_map_update_elem(&listeners, k, &found, BPF_ANY);
	return bpf_map_lookup_elem(&listeners, k);
}

/* The owner of the listener that accepted the connection whose local end is `t`: a listener bound to that address,
 * else one bound to the wildcard address of the family (a dual-stack [::] listener's v4-mapped connections find it
 * that way too); else, the same two ways, one that listened without bind() and is still under port 0. */
static __always_inline struct gs_listen_owner *listener_of(__u32 netns, const struct tuple *t)
{
	struct gs_listen_key k = {};
	struct gs_listen_owner *o;

	listen_key(&k, netns, t);
	o = bpf_map_lookup_elem(&listeners, &k);
	if (o)
		return o;
	__builtin_memset(k.addr, 0, sizeof(k.addr));
	o = bpf_map_lookup_elem(&listeners, &k);
	if (o || t->lport == 0)
		return o;
	o = take_unbound(&k, t->lport);
	if (o)
		return o;
	listen_key(&k, netns, t);
	return take_unbound(&k, t->lport);
}

/* bpf_ringbuf_submit flags and bpf_ringbuf_query selectors (uapi enums, not in vmlinux_min.h). */
#define GS_RB_NO_WAKEUP 1
#define GS_RB_FORCE_WAKEUP 2
#define GS_RB_AVAIL_DATA 0

/* Wakeup batching. A submit wakes the reader in two cases only:
 * - a quarter of the ring is pending (a burst: one wakeup per batch instead of one per event);
 * - no event was emitted for GS_QUIET_NS: the reader may have gone idle, so the first event of a quiet spell wakes
 *   it at once.
 * Every other event is left to the reader's follow-up read: after a read that found events, it reads again
 * POLL_INTERVAL (10 ms) later, until a read finds nothing (sidecar-agent/src/ebpf/reader.rs). That covers them:
 * an event not woken for came at most GS_QUIET_NS after an earlier one, and the read that found the earlier one
 * is followed by a read at least 10 ms after it, so after the later one too. An idle agent then wakes for events
 * only, not on a timer (the default policy instead wakes the reader on every submit that finds it caught up, which
 * on a fast reader is nearly every one).
 *
 * `last_emit_ns` is shared by every CPU and written without a lock, at most every GS_QUIET_REFRESH_NS. Whatever it
 * holds is the time of an event that was emitted, no later than the latest one: a stale value, or one written out
 * of order by another CPU, only makes `now - last` larger (a spare wakeup), never smaller. */
#define GS_QUIET_NS (5ULL * 1000 * 1000)
#define GS_QUIET_REFRESH_NS (1000ULL * 1000)
__u64 last_emit_ns = 0;

static __always_inline __u64 wakeup_flag(__u64 now)
{
	__u64 pending = bpf_ringbuf_query(&events, GS_RB_AVAIL_DATA);
	__u64 last = last_emit_ns;
	/* A concurrent emit on another CPU may have stored a later time than ours: the difference is then "negative"
	 * (huge as unsigned), which wakes the reader once more, harmlessly. */
	__u64 since = now - last;

	/* Written at most every GS_QUIET_REFRESH_NS: every CPU writing one cache line on every event would bounce it. */
	if (since > GS_QUIET_REFRESH_NS)
		last_emit_ns = now;
	return pending >= ring_bytes / 4 || since > GS_QUIET_NS ? GS_RB_FORCE_WAKEUP : GS_RB_NO_WAKEUP;
}

static __always_inline void emit(__u8 kind, const struct gs_conn_state *st, const struct tuple *t, __u64 skaddr,
				 __u32 netns, __u64 now)
{
	struct gs_conn_event *e;

	count(GS_STAT_PRODUCED);
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(GS_STAT_DROPPED);
		return;
	}
	e->ts_ns = now;
	e->skaddr = skaddr;
	e->duration_ns = kind == GS_EVENT_CLOSED ? now - st->start_ns : 0;
	e->proc_start_ns = st->proc_start_ns;
	e->pid = st->pid;
	e->tid = st->tid;
	e->netns = netns;
	e->family = t->family;
	e->lport = t->lport;
	e->rport = t->rport;
	e->kind = kind;
	e->role = st->role;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	__builtin_memcpy(e->laddr, t->laddr, sizeof(e->laddr));
	__builtin_memcpy(e->raddr, t->raddr, sizeof(e->raddr));
	__builtin_memcpy(e->comm, st->comm, sizeof(e->comm));
	bpf_ringbuf_submit(e, wakeup_flag(now));
}

/* The state changes of a TCP socket (`inet_sock_set_state`, with its arguments sk, oldstate, newstate), in two
 * builds of one body: `direct` (a tp_btf program: the socket's and the task's fields are direct loads) and not (a
 * raw tracepoint: every field a bpf_probe_read_kernel call, for kernels that refuse BTF tracing programs). Neither
 * formats the ~100-byte trace record the classic `sock:inet_sock_set_state` event builds on every one of the ~10
 * state changes of a connection, and the transitions that do not matter cost only the compare. */
static __always_inline int set_state(const struct sock *sk, __s32 oldstate, __s32 newstate, const int direct)
{
	struct gs_conn_state fresh = {}, *st;
	struct gs_listen_owner *lo;
	struct tuple t = {};
	__u64 key = (__u64)sk, now;
	__u32 netns;

	/* Filter on the transition first, before any read: of the ~10 state changes of a connect/accept/close cycle
	 * only four matter to the table, plus the rare ones into and out of LISTEN. */
	if (newstate != TCP_SYN_SENT && newstate != TCP_CLOSE && newstate != TCP_LISTEN &&
	    !(newstate == TCP_ESTABLISHED && (oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV)))
		return 0;
	/* A close matters only for a listener or a socket in `conns` (untracked sockets: most closes on a busy node);
	 * the entry found is the one the close emits from. */
	st = 0;
	if (newstate == TCP_CLOSE && oldstate != TCP_LISTEN) {
		st = bpf_map_lookup_elem(&conns, &key);
		if (!st)
			return 0;
	}
	/* the tracepoint also fires for other inet protocols (MPTCP subflows' parent, SCTP) */
	if ((direct ? sk->sk_protocol : BPF_CORE_READ(sk, sk_protocol)) != IPPROTO_TCP)
		return 0;
	t.family = direct ? sk->__sk_common.skc_family : BPF_CORE_READ(sk, __sk_common.skc_family);
	if (t.family != AF_INET && t.family != AF_INET6)
		return 0;
	netns = direct ? sk_netns_direct(sk) : sk_netns(sk);
	if (!netns_wanted(netns))
		return 0;
	if (direct)
		sk_tuple_direct(sk, &t);
	else
		sk_tuple(sk, &t);

	if (newstate == TCP_LISTEN) {
		on_listen(key, netns, &t, direct);
		return 0;
	}
	if (oldstate == TCP_LISTEN) { /* LISTEN -> CLOSE */
		on_listen_close(key, netns, &t);
		return 0;
	}
	now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		/* connect(2): the caller is `current`. Deleted at TCP_CLOSE. */
		fresh.start_ns = now;
		fresh.role = GS_ROLE_CLIENT;
		if (direct)
			OWN_DIRECT(&fresh);
		else
			own(&fresh);
		bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
		return 0;
	}

	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_SENT) {
		st = bpf_map_lookup_elem(&conns, &key);
		if (!st) /* connect() started before the agent */
			return 0;
		set_tuple(st, &t, netns);
		emit(GS_EVENT_ESTABLISHED, st, &t, key, netns, now);
		return 0;
	}

	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV) {
		/* A passive open: `current` is not the server, the listener's owner is. Deleted at TCP_CLOSE. */
		fresh.start_ns = now;
		fresh.role = GS_ROLE_SERVER;
		set_tuple(&fresh, &t, netns);
		lo = listener_of(netns, &t);
		if (lo) {
			fresh.pid = lo->pid;
			fresh.tid = lo->tid;
			fresh.proc_start_ns = lo->proc_start_ns;
			__builtin_memcpy(fresh.comm, lo->comm, sizeof(fresh.comm));
		}
		/* The socket has an entry already when accept() returned it before this softirq ran (it named the
		 * owner), or when it is no passive open: it connected (SYN_SENT -> SYN_RECV, a simultaneous open: two
		 * peers connecting to each other, or a socket connected to its own address), and the entry names the
		 * connecting task. The insert finds out, so a passive open costs no lookup more. */
		if (bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST)) {
			st = bpf_map_lookup_elem(&conns, &key);
			if (st) {
				set_tuple(st, &t, netns);
				emit(GS_EVENT_ESTABLISHED, st, &t, key, netns, now);
				return 0;
			}
		}
		if (!lo)
			count(GS_STAT_UNOWNED);
		emit(GS_EVENT_ESTABLISHED, &fresh, &t, key, netns, now);
		return 0;
	}

	if (newstate == TCP_CLOSE && st) {
		emit(GS_EVENT_CLOSED, st, &t, key, netns, now);
		bpf_map_delete_elem(&conns, &key);
	}
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int handle_set_state(__u64 *ctx)
{
	return set_state((const struct sock *)ctx[0], (__s32)ctx[1], (__s32)ctx[2], 1);
}

SEC("raw_tp/inet_sock_set_state")
int handle_set_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return set_state((const struct sock *)ctx->args[0], (__s32)ctx->args[1], (__s32)ctx->args[2], 0);
}

static __always_inline int on_accept_exit(__s64 ret)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct gs_conn_state fresh = {}, *st;
	struct tuple t = {};
	struct fdtable *fdt;
	struct file **fds, *file = 0;
	struct socket *sock;
	struct sock *sk;
	__u64 key, now;
	__u32 netns;
	__u8 state;

	if (ret < 0)
		return 0;
	fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || (__u64)ret >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[ret]) || !file)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	t.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (t.family != AF_INET && t.family != AF_INET6)
		return 0; /* AF_UNIX and friends */
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0; /* SCTP, MPTCP */
	netns = sk_netns(sk);
	if (!netns_wanted(netns))
		return 0;

	key = (__u64)sk;
	now = bpf_ktime_get_ns();
	st = bpf_map_lookup_elem(&conns, &key);
	if (st) {
		own(st);
	} else {
		/* Only a socket still in SYN_RECV (accept won the race against the ESTABLISHED softirq) is new here;
		 * anything else was established before the agent started and is not tracked. A close racing this
		 * insert can leave it behind: the LRU evicts it. */
		state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (state != TCP_SYN_RECV)
			return 0;
		fresh.start_ns = now;
		fresh.role = GS_ROLE_SERVER;
		own(&fresh);
		bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
		st = &fresh;
	}

	sk_tuple(sk, &t);
	emit(GS_EVENT_ACCEPTED, st, &t, key, netns, now);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_accept4_exit(struct sys_exit_ctx *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_accept_exit(struct sys_exit_ctx *ctx)
{
	return on_accept_exit(ctx->ret);
}

char LICENSE[] SEC("license") = "GPL";
