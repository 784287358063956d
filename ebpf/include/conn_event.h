/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The ABI between the kernel programs and the agent: one event record in the ring buffer, the stats slots and
 * the values of the kind/role fields. Mirrored by `sidecar-agent/src/ebpf/events.rs`; both sides pin the size.
 * No bool, no implicit padding: every hole is an explicit `pad` field.
 */
#ifndef __GRAYSCOPE_CONN_EVENT_H
#define __GRAYSCOPE_CONN_EVENT_H

#include <linux/types.h>

/* event kinds */
#define GS_EVENT_ESTABLISHED 1 /* handshake done; 4-tuple known (client: owner known; server: maybe not yet) */
#define GS_EVENT_ACCEPTED 2    /* accept(2)/accept4(2) returned the socket: owner = accepting process */
#define GS_EVENT_CLOSED 3      /* socket reached TCP_CLOSE; duration_ns set */

/* which end of the connection this socket is */
#define GS_ROLE_CLIENT 1 /* active open (connect) */
#define GS_ROLE_SERVER 2 /* passive open (accepted from a listener) */

/* slots of the per-CPU `stats` array */
#define GS_STAT_PRODUCED 0 /* events the programs tried to emit */
#define GS_STAT_DROPPED 1  /* of those, ring buffer reservations that failed */
#define GS_STAT_UNOWNED 2  /* passive opens whose listener has no known owner (emitted without one) */
#define GS_STAT_MAX 3

#define GS_COMM_LEN 16

struct gs_conn_event {
	__u64 ts_ns;         /* bpf_ktime_get_ns() when emitted */
	__u64 skaddr;        /* kernel address of the struct sock: the connection's identity while it lives */
	__u64 duration_ns;   /* CLOSED: time since the connection was first seen (SYN_SENT or ESTABLISHED) */
	__u64 proc_start_ns; /* owner's thread-group leader start_boottime; 0 when the owner is unknown */
	__u32 pid;           /* owner's tgid in the agent's pid namespace; 0 when unknown or outside it */
	__u32 tid;           /* owner's thread id */
	__u32 netns;         /* inode number of the socket's network namespace */
	__u16 family;        /* AF_INET (2) or AF_INET6 (10); v4-mapped addresses come as AF_INET6 */
	__u16 lport;         /* local port, host byte order */
	__u16 rport;         /* remote port, host byte order */
	__u8 kind;           /* GS_EVENT_* */
	__u8 role;           /* GS_ROLE_* */
	__u8 pad[4];
	__u8 laddr[16];      /* local address, network order; AF_INET uses the first 4 bytes */
	__u8 raddr[16];      /* remote address, same layout */
	char comm[GS_COMM_LEN]; /* owner thread's comm; empty when unknown */
};

_Static_assert(sizeof(struct gs_conn_event) == 104, "gs_conn_event ABI changed: update events.rs too");
_Static_assert(__builtin_offsetof(struct gs_conn_event, laddr) == 56, "gs_conn_event ABI changed: update events.rs too");
_Static_assert(__builtin_offsetof(struct gs_conn_event, comm) == 88, "gs_conn_event ABI changed: update events.rs too");

/*
 * The `conns` map's value: a tracked socket's owner and, once it is established, its 4-tuple. The agent reads the
 * map to learn the connections whose ESTABLISHED event the full ring buffer dropped (mirrored by
 * `sidecar-agent/src/ebpf/conn_state.rs`).
 */
struct gs_conn_state {
	__u64 start_ns;      /* bpf_ktime_get_ns() when the socket was first seen (SYN_SENT or ESTABLISHED) */
	__u64 proc_start_ns; /* as in gs_conn_event */
	__u32 pid;
	__u32 tid;
	__u32 netns;         /* set with the 4-tuple */
	__u16 family;        /* 0 until the socket is established: the 4-tuple below is not known yet */
	__u16 lport;         /* host byte order */
	__u16 rport;         /* host byte order */
	__u8 role;           /* GS_ROLE_* */
	__u8 pad[5];
	char comm[GS_COMM_LEN];
	__u8 laddr[16];      /* network order; AF_INET uses the first 4 bytes */
	__u8 raddr[16];
};

_Static_assert(sizeof(struct gs_conn_state) == 88, "gs_conn_state ABI changed: update sidecar-agent/src/ebpf/conn_state.rs too");
_Static_assert(__builtin_offsetof(struct gs_conn_state, comm) == 40, "gs_conn_state ABI changed: update sidecar-agent/src/ebpf/conn_state.rs too");
_Static_assert(__builtin_offsetof(struct gs_conn_state, laddr) == 56, "gs_conn_state ABI changed: update sidecar-agent/src/ebpf/conn_state.rs too");

/*
 * The `listeners` map: who owns each listening socket, so an accepted connection is named after its listener's
 * owner at the passive open (a softirq, where `current` is meaningless) without a syscall tracepoint. Filled by
 * the kernel at CLOSE -> LISTEN (the listen() caller is `current`) and by the agent from /proc at start for the
 * listeners that already existed. Mirrored by `sidecar-agent/src/ebpf/listeners.rs`.
 */
struct gs_listen_key {
	__u32 netns;   /* inode number of the listener's network namespace */
	__u16 family;  /* AF_INET or AF_INET6 */
	__u16 port;    /* local port, host byte order */
	__u8 addr[16]; /* bound address, network order (AF_INET: first 4 bytes); all zero for a wildcard bind */
};

struct gs_listen_owner {
	__u64 skaddr;        /* the listening struct sock; 0 when the agent found the listener in /proc */
	__u64 proc_start_ns; /* owner's thread-group leader start_boottime */
	__u32 pid;           /* tgid of the process that called listen(), as the event's pid */
	__u32 tid;           /* its thread */
	char comm[GS_COMM_LEN];
};

_Static_assert(sizeof(struct gs_listen_key) == 24, "gs_listen_key ABI changed: update listeners.rs too");
_Static_assert(sizeof(struct gs_listen_owner) == 40, "gs_listen_owner ABI changed: update listeners.rs too");

#endif /* __GRAYSCOPE_CONN_EVENT_H */
