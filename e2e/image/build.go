package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// BinaryPath is where the image keeps our binary, as in manifests/Dockerfile.
const BinaryPath = "/usr/local/bin/tidb-localpv"

// defaultPath is the PATH of both images: Debian's, so mount-utils finds
// mkfs, blkid and mount.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// BuildBinary builds cmd/tidb-localpv of the repository at repoRoot as a
// static executable (CGO off, like the Dockerfile) into out.
func BuildBinary(ctx context.Context, repoRoot, out, version string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath",
		"-ldflags", "-s -w -X main.version="+version, "-o", out, "./cmd/tidb-localpv")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build tidb-localpv: %w: %s", err, b)
	}
	return nil
}

// Options describe the tidb-localpv image.
type Options struct {
	// Base is the base layer tarball (EnsureBase).
	Base string
	// Binary is the static tidb-localpv executable.
	Binary string
	// Refs name the image, e.g. tidb-localpv.local/tidb-localpv:dev; the
	// archive carries each (the first is the one docker load prints).
	Refs []string
	// Out is the docker-archive tarball to write.
	Out string
}

// Build writes the tidb-localpv image: the base, then our binary as a
// layer of its own, with the Dockerfile's entrypoint.
func Build(opts Options) error {
	base, err := tarball.LayerFromFile(opts.Base)
	if err != nil {
		return fmt.Errorf("base layer: %w", err)
	}
	bin, err := fileLayer(map[string]string{BinaryPath: opts.Binary})
	if err != nil {
		return err
	}
	img, err := assemble([]v1.Layer{base, bin}, []string{BinaryPath}, nil)
	if err != nil {
		return err
	}
	return write(opts.Out, opts.Refs, img)
}

// Test images: one static Go program (e2e/image/testpod) serves as the
// sandbox ("pause") image of the real nodes' containerd and as the
// TiKV-like consumer. Nothing is pulled from a registry.
const (
	PauseRef   = "tidb-localpv.local/pause:e2e"
	TestPodRef = "tidb-localpv.local/testpod:e2e"
	testPodBin = "/testpod"
)

// BuildTestImages writes both test images, made from the testpod
// executable, into one docker-archive at out.
func BuildTestImages(testpod, out string) error {
	layer, err := fileLayer(map[string]string{testPodBin: testpod})
	if err != nil {
		return err
	}
	pause, err := assemble([]v1.Layer{layer}, []string{testPodBin, "pause"}, nil)
	if err != nil {
		return err
	}
	pod, err := assemble([]v1.Layer{layer}, []string{testPodBin, "tikv"}, nil)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for ref, img := range map[string]v1.Image{PauseRef: pause, TestPodRef: pod} {
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	return writeMulti(out, refs)
}

// BuildTestPod builds the testpod program statically into out.
func BuildTestPod(ctx context.Context, repoRoot, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./e2e/image/testpod")
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build testpod: %w: %s", err, b)
	}
	return nil
}

// assemble stacks layers on an empty image and sets a linux/amd64 config
// (containerd imports only images of its own platform) with entrypoint.
func assemble(layers []v1.Layer, entrypoint, cmd []string) (v1.Image, error) {
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		return nil, fmt.Errorf("append layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Now().UTC().Truncate(time.Second)}
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = cmd
	cf.Config.Env = []string{defaultPath}
	return mutate.ConfigFile(img, cf)
}

// fileLayer makes a layer holding files (image path → host path), each
// executable, with their parent directories.
func fileLayer(files map[string]string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	now := time.Now().UTC().Truncate(time.Second)
	for dst, src := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		rel := filepath.ToSlash(filepath.Clean(dst))[1:]
		for d := filepath.Dir(rel); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: now}); err != nil {
				return nil, err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(data)), ModTime: now}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(buf.Bytes())), nil
	})
	if err != nil {
		return nil, fmt.Errorf("file layer: %w", err)
	}
	return layer, nil
}

func write(out string, refs []string, img v1.Image) error {
	m := map[name.Reference]v1.Image{}
	for _, r := range refs {
		tag, err := name.NewTag(r)
		if err != nil {
			return fmt.Errorf("image name %q: %w", r, err)
		}
		m[tag] = img
	}
	return writeMulti(out, m)
}

// writeMulti writes a docker-archive atomically (temp file, rename), so a
// reader never imports half an image.
func writeMulti(out string, refs map[name.Reference]v1.Image) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}
