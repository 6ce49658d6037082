module stackspace.dev/toolchain/docker-provider

go 1.25.8

// The upstream module is assembled at build time (by
// scripts/toolchain/docker-provider.sh) in a scratch copy of this module inside
// the cache: the published kreuzwerker module plus our _overlay/shim file.
replace github.com/terraform-providers/terraform-provider-docker => ./upstream

// Same as pulumi-terraform-bridge's own go.mod.
replace github.com/hashicorp/terraform-plugin-sdk/v2 => github.com/pulumi/terraform-plugin-sdk/v2 v2.0.0-20260318212141-5525259d096b

require (
	github.com/pulumi/pulumi-terraform-bridge/v3 v3.127.0
	github.com/pulumi/pulumi/sdk/v3 v3.231.0
	github.com/terraform-providers/terraform-provider-docker v0.0.0
)
