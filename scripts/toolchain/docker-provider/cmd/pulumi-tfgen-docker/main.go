// Command pulumi-tfgen-docker generates schema.json and bridge-metadata.json
// for the stackspace build of the docker provider.
package main

import (
	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfgen"

	"stackspace.dev/toolchain/docker-provider/provider"
	"stackspace.dev/toolchain/docker-provider/version"
)

func main() {
	tfgen.Main("docker", version.Version, provider.Provider(nil))
}
