//go:build tools

// Package tools pins the pulumi-kubernetes provider plugin's main package so
// `go mod tidy` keeps its dependencies. The plugin is built from a generated
// copy of that package (see ../kubernetes-provider.sh), not from here.
package tools

import _ "github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes"
