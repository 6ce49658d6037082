// Package shim is stackspace's own tiny file, copied at build time into a
// scratch copy of the upstream Terraform docker provider module (inside the
// build cache, never into this repository's tree as Go source). It lives under
// the upstream module so that it may import that module's internal package.
package shim

import (
	"github.com/hashicorp/terraform-plugin-sdk/v2/helper/schema"
	"github.com/terraform-providers/terraform-provider-docker/internal/provider"
)

// NewProvider returns the upstream SDKv2 provider.
func NewProvider() *schema.Provider {
	return provider.New("stackspace")()
}
