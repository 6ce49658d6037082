// Package version holds the plugin version, stamped at link time with
// -ldflags "-X stackspace.dev/toolchain/docker-provider/version.Version=X.Y.Z".
package version

// Version is the provider version reported to the Pulumi engine.
var Version = "0.0.0-dev"
