/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * The few kernel types the grayscope programs read, declared by hand instead of a 2.8 MB `bpftool btf dump`.
 *
 * Every record carries `preserve_access_index`, so each field access becomes a CO-RE relocation that libbpf
 * (here: aya) resolves by *name* against the running kernel's BTF at load time. Offsets and sizes below are
 * therefore irrelevant; only field names and the access paths matter. Anonymous unions of the real kernel
 * structs are flattened: CO-RE matching looks through anonymous members of the target type.
 *
 * Pinned against Linux 6.x (checked on 6.18). A kernel without one of these fields fails to load with a CO-RE
 * relocation error naming it, never silently reads garbage.
 */
#ifndef __GRAYSCOPE_VMLINUX_MIN_H
#define __GRAYSCOPE_VMLINUX_MIN_H

#include <linux/types.h>
#include <linux/bpf.h> /* map types and flags (BPF_MAP_TYPE_*, BPF_ANY), from linux-libc-dev */

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	__u8 s6_addr[16];
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
};

/* `struct inet_sock` starts with its `struct sock`; `inet_sport` (network order) keeps the local port after a
 * close has released the bound port (`skc_num` is zeroed by inet_put_port before the CLOSE state change). */
struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

struct socket {
	struct sock *sk;
};

struct file {
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct task_struct {
	struct files_struct *files;
	struct task_struct *group_leader;
	__u64 start_boottime;
};

#pragma clang attribute pop

#endif /* __GRAYSCOPE_VMLINUX_MIN_H */
