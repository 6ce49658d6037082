// Command etcd is the etcd server, built from the published
// go.etcd.io/etcd/server/v3 module (its own main lives in a module that is
// not published on its own).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
