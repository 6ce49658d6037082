module stackspace.dev/toolchain/kubernetes/pause

go 1.24.0
