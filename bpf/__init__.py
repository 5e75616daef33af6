"""eBPF socket load balancer: C programs, map layouts, loader. Built in the datapath issue."""
