// The etcd binary: the same entry point as etcd's own main package
// (go.etcd.io/etcd/v3), which is not importable as a dependency.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
