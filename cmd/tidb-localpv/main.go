package main

import (
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/spf13/cobra"
	_ "github.com/stretchr/testify/require"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/mount-utils"
	_ "sigs.k8s.io/sig-storage-lib-external-provisioner/v9/controller"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "k8s.io/klog/v2"
	_ "golang.org/x/sys/unix"
)

func main() {}
