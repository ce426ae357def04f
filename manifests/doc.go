// Package manifests holds the tests of the install: the kustomize base and
// its overlays render with every reference intact, and the monitoring
// component's rules and dashboard parse and use only metrics the binaries
// serve. It is a module of its own so that kustomize's and Prometheus's
// libraries stay out of the binaries' go.mod.
package manifests
