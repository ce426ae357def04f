package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// kubeCommands returns the kubernetes main packages we build.
func kubeCommands() []string {
	return []string{
		"k8s.io/kubernetes/cmd/kube-apiserver",
		"k8s.io/kubernetes/cmd/kube-controller-manager",
		"k8s.io/kubernetes/cmd/kube-scheduler",
		"k8s.io/kubernetes/cmd/kubelet",
	}
}

// kubeVersion is a kubernetes release and the matching staging-module version.
type kubeVersion struct {
	Full    string // v1.35.4
	Major   string // 1
	Minor   string // 35
	Staging string // v0.35.4, the version of k8s.io/api & co.
}

var kubeVersionRE = regexp.MustCompile(`^v1\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?$`)

func parseKubeVersion(v string) (kubeVersion, error) {
	m := kubeVersionRE.FindStringSubmatch(v)
	if m == nil {
		return kubeVersion{}, fmt.Errorf("kube version %q: want v1.MINOR.PATCH", v)
	}
	return kubeVersion{Full: v, Major: "1", Minor: m[1], Staging: "v0." + m[1] + "." + m[2] + m[3]}, nil
}

// ldflags stamps the version that /version reports; without it the binaries
// say v0.0.0-master and version-gated clients misbehave. The flag set and its
// order must stay as is: the Go build cache was warmed with exactly this.
func (v kubeVersion) ldflags() string {
	return strings.Join([]string{
		"-s", "-w",
		"-X", "k8s.io/component-base/version.gitVersion=" + v.Full,
		"-X", "k8s.io/component-base/version.gitMajor=" + v.Major,
		"-X", "k8s.io/component-base/version.gitMinor=" + v.Minor,
		"-X", "k8s.io/client-go/pkg/version.gitVersion=" + v.Full,
		"-X", "k8s.io/client-go/pkg/version.gitMajor=" + v.Major,
		"-X", "k8s.io/client-go/pkg/version.gitMinor=" + v.Minor,
	}, " ")
}

// buildKube builds kube-apiserver, kube-controller-manager, kube-scheduler and
// the kubelet of the real nodes (they share 94% of their packages).
// k8s.io/kubernetes cannot be `go install`ed because its go.mod points the
// staging modules at ./staging; a generated module requires it and points
// them at their published versions instead.
func (b *builder) buildKube(ctx context.Context, outDir string) error {
	return b.buildKubeCommands(ctx, "kube", outDir, kubeCommands())
}

// buildKubeCommands builds commands of k8s.io/kubernetes at the configured
// version into outDir, through a generated module (see buildKube).
func (b *builder) buildKubeCommands(ctx context.Context, what, outDir string, cmds []string) error {
	v, err := parseKubeVersion(b.opts.KubeVersion)
	if err != nil {
		return err
	}
	mod, err := os.MkdirTemp("", "tidb-localpv-"+what+"build-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mod)

	upstream, err := b.downloadGoMod(ctx, mod, "k8s.io/kubernetes@"+v.Full)
	if err != nil {
		return err
	}
	goMod, err := kubeGoMod(upstream, v)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), goMod, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(mod, "tools.go"), toolsGo(cmds), 0o644); err != nil {
		return err
	}
	if err := b.runGoLong(ctx, what+": go mod tidy", mod, nil, "mod", "tidy"); err != nil {
		return err
	}
	args := []string{"build", "-v", "-trimpath", "-ldflags", v.ldflags(), "-o", outDir + string(filepath.Separator)}
	return b.runGoLong(ctx, what+" binaries", mod, nil, append(args, cmds...)...)
}

// downloadGoMod fetches a module's go.mod through the module proxy.
func (b *builder) downloadGoMod(ctx context.Context, dir, modAtVersion string) ([]byte, error) {
	out, err := b.runGo(ctx, dir, nil, "mod", "download", "-json", modAtVersion)
	if err != nil {
		return nil, err
	}
	var info struct{ GoMod, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("go mod download %s: %w", modAtVersion, err)
	}
	if info.Error != "" || info.GoMod == "" {
		return nil, fmt.Errorf("go mod download %s: %s", modAtVersion, orDash(info.Error))
	}
	return os.ReadFile(info.GoMod)
}

// toolsGo blank-imports the commands so `go mod tidy` resolves their deps.
func toolsGo(pkgs []string) []byte {
	var buf bytes.Buffer
	buf.WriteString("//go:build tools\n\npackage tools\n\nimport (\n")
	for _, p := range pkgs {
		fmt.Fprintf(&buf, "\t_ %q\n", p)
	}
	buf.WriteString(")\n")
	return buf.Bytes()
}

// kubeGoMod renders the build module's go.mod from kubernetes' own: the same
// go and godebug lines (they change defaults the binaries rely on), a require
// of k8s.io/kubernetes, and every replace of kubernetes' go.mod, with those
// that point into ./staging turned into the published staging version.
func kubeGoMod(upstream []byte, v kubeVersion) ([]byte, error) {
	var goLine string
	var godebug, replaces []string
	block := "" // the directive of the ( ... ) block being read
	sc := bufio.NewScanner(bytes.NewReader(upstream))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "//"); i >= 0 {
			line = line[:i]
		}
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if block != "" {
			switch {
			case line == ")":
				block = ""
			case block == "godebug":
				godebug = append(godebug, line)
			case block == "replace":
				r, err := rewriteReplace(line, v)
				if err != nil {
					return nil, err
				}
				replaces = append(replaces, r)
			}
			continue
		}
		verb, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		if rest == "(" {
			block = verb
			continue
		}
		switch verb {
		case "go":
			goLine = line
		case "godebug":
			godebug = append(godebug, rest)
		case "replace":
			r, err := rewriteReplace(rest, v)
			if err != nil {
				return nil, err
			}
			replaces = append(replaces, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if goLine == "" {
		return nil, fmt.Errorf("kubernetes %s go.mod has no go line", v.Full)
	}
	if len(replaces) == 0 {
		return nil, fmt.Errorf("kubernetes %s go.mod has no replace directives; its layout changed", v.Full)
	}

	var buf bytes.Buffer
	fmt.Fprintf(&buf, "// Generated from the go.mod of k8s.io/kubernetes %s.\n\nmodule kubebuild\n\n%s\n\n", v.Full, goLine)
	writeBlock(&buf, "godebug", godebug)
	fmt.Fprintf(&buf, "require k8s.io/kubernetes %s\n\n", v.Full)
	writeBlock(&buf, "replace", replaces)
	return buf.Bytes(), nil
}

// rewriteReplace turns "k8s.io/api => ./staging/src/k8s.io/api" into
// "k8s.io/api => k8s.io/api v0.X.Y"; replaces to other module versions are
// kept verbatim so the build resolves exactly what kubernetes pinned.
func rewriteReplace(spec string, v kubeVersion) (string, error) {
	old, target, ok := strings.Cut(spec, "=>")
	old, target = strings.TrimSpace(old), strings.TrimSpace(target)
	if !ok || old == "" || target == "" {
		return "", fmt.Errorf("kubernetes %s go.mod: malformed replace %q", v.Full, spec)
	}
	if !strings.HasPrefix(target, "./") && !strings.HasPrefix(target, "../") {
		return old + " => " + target, nil
	}
	oldPath := strings.Fields(old)[0]
	if !strings.HasPrefix(oldPath, "k8s.io/") {
		return "", fmt.Errorf("kubernetes %s go.mod: local replace of %s is not a staging module", v.Full, oldPath)
	}
	return oldPath + " => " + oldPath + " " + v.Staging, nil
}

func writeBlock(buf *bytes.Buffer, verb string, lines []string) {
	switch len(lines) {
	case 0:
	case 1:
		fmt.Fprintf(buf, "%s %s\n\n", verb, lines[0])
	default:
		fmt.Fprintf(buf, "%s (\n", verb)
		for _, l := range lines {
			fmt.Fprintf(buf, "\t%s\n", l)
		}
		buf.WriteString(")\n\n")
	}
}
