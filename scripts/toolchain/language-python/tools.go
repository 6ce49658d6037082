//go:build tools

// Package tools pins Pulumi's Python language host (pulumi-language-python)
// so `go mod tidy` keeps its dependencies. See ../language-python.sh for why
// this is the copy inside the sdk/v3 module.
package tools

import _ "github.com/pulumi/pulumi/sdk/v3/python/cmd/pulumi-language-python"
