// Package provider maps the upstream Terraform docker provider (SDKv2 half)
// onto the Pulumi token names used by the published pulumi-docker SDKs.
// It is stackspace's own mapping, written to match the tokens and property
// names of the PyPI pulumi-docker SDK; scripts/toolchain/docker-provider.sh
// checks the generated schema against that SDK.
package provider

import (
	"unicode"

	"github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfbridge"
	shimv2 "github.com/pulumi/pulumi-terraform-bridge/v3/pkg/tfshim/sdk-v2"
	"github.com/pulumi/pulumi/sdk/v3/go/common/tokens"
	"github.com/terraform-providers/terraform-provider-docker/shim"

	"stackspace.dev/toolchain/docker-provider/version"
)

func member(name string) string {
	lower := string(unicode.ToLower(rune(name[0]))) + name[1:]
	return "docker:index/" + lower + ":" + name
}

func res(name string) *tfbridge.ResourceInfo {
	return &tfbridge.ResourceInfo{Tok: tokens.Type(member(name))}
}

func data(name string) *tfbridge.DataSourceInfo {
	return &tfbridge.DataSourceInfo{Tok: tokens.ModuleMember(member(name))}
}

// Provider returns the bridge description. metadata is the content of
// bridge-metadata.json (nil or "{}" while running tfgen).
func Provider(metadata []byte) tfbridge.ProviderInfo {
	if len(metadata) == 0 {
		metadata = []byte("{}")
	}
	container := res("Container")
	container.DeleteBeforeReplace = true
	container.Fields = map[string]*tfbridge.SchemaInfo{
		"command":           {Name: "command"},
		"networks_advanced": {Name: "networksAdvanced"},
	}
	remoteImage := res("RemoteImage")
	remoteImage.Fields = map[string]*tfbridge.SchemaInfo{"name": {Name: "name"}}

	prov := tfbridge.ProviderInfo{
		P:           shimv2.NewProvider(shim.NewProvider()),
		Name:        "docker",
		Version:     version.Version,
		Description: "A Pulumi package for interacting with Docker in Pulumi programs",
		Keywords:    []string{"pulumi", "docker"},
		License:     "Apache-2.0",
		Homepage:    "https://pulumi.io",
		Repository:  "https://github.com/pulumi/pulumi-docker",
		GitHubOrg:   "kreuzwerker",
		// tfgen reads upstream docs from the scratch copy next to go.mod.
		UpstreamRepoPath: "./upstream",
		MetadataInfo:     tfbridge.NewProviderMetadata(metadata),
		Config: map[string]*tfbridge.SchemaInfo{
			"host": {Default: &tfbridge.DefaultInfo{EnvVars: []string{"DOCKER_HOST"}}},
			"registry_auth": {
				Name:        "registryAuth",
				MaxItemsOne: tfbridge.False(),
			},
		},
		Resources: map[string]*tfbridge.ResourceInfo{
			"docker_buildx_builder": res("BuildxBuilder"),
			"docker_config":         res("ServiceConfig"),
			"docker_container":      container,
			"docker_image":          remoteImage,
			"docker_network":        res("Network"),
			"docker_plugin":         res("Plugin"),
			"docker_registry_image": res("RegistryImage"),
			"docker_secret":         res("Secret"),
			"docker_service":        res("Service"),
			"docker_tag":            res("Tag"),
			"docker_volume":         res("Volume"),
		},
		DataSources: map[string]*tfbridge.DataSourceInfo{
			"docker_image":                    data("getRemoteImage"),
			"docker_logs":                     data("getLogs"),
			"docker_network":                  data("getNetwork"),
			"docker_plugin":                   data("getPlugin"),
			"docker_registry_image":           data("getRegistryImage"),
			"docker_registry_image_manifests": data("getRegistryImageManifests"),
		},
	}
	prov.SetAutonaming(255, "-")
	return prov
}
