"""bpf: the eBPF socket load balancer (C) and the Python side that loads and programs it.

Flow: the agent's `LbDiff` (`lbstate`) -> `LbMaps.apply` (`lbmaps`: validated, ordered
make-before-break, batched) -> a `MapStore` (`mapstore`): the kernel's pinned maps
(`pinned_maps`), or an in-memory or faulty store (`fakemaps`). `loader` loads `sock_lb.o`
through `libbpf` (the only module that loads libbpf), pins maps and links under
`<bpffs>/cellmesh/<instance>/` and attaches connect4 / sendmsg4 / recvmsg4 / getpeername4 to a
cgroup v2, so the datapath outlives the agent. `layout` mirrors `lb_maps.h` byte for byte.
Reading order: bpf/README.md.
"""
