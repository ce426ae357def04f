package pd

import (
	"errors"
	"fmt"
	"strings"
)

// DefaultEndpointTemplate is where TiDB Operator's PD service answers.
const DefaultEndpointTemplate = "http://{instance}-pd.{namespace}:2379"

// InstanceLabel is the label {instance} stands for.
const InstanceLabel = "app.kubernetes.io/instance"

// EndpointTemplate turns a pod's labels and namespace into the URL of the PD
// that serves its cluster. Placeholders: {namespace}, {instance} (the
// app.kubernetes.io/instance label) and {label:<key>} for any label.
type EndpointTemplate struct {
	raw   string
	parts []templatePart
}

// templatePart is a literal (label == "" and !namespace) or a placeholder.
type templatePart struct {
	literal   string
	namespace bool
	label     string
}

// ParseEndpointTemplate parses and checks a template; it fails on unknown
// placeholders, unbalanced braces, and templates that cannot render to an
// http(s) URL.
func ParseEndpointTemplate(s string) (EndpointTemplate, error) {
	t := EndpointTemplate{raw: s}
	rest := s
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			t.parts = append(t.parts, templatePart{literal: rest})
			break
		}
		if rest[open] == '}' {
			return EndpointTemplate{}, fmt.Errorf("endpoint template %q: '}' without '{'", s)
		}
		if open > 0 {
			t.parts = append(t.parts, templatePart{literal: rest[:open]})
		}
		end := strings.IndexAny(rest[open+1:], "{}")
		if end < 0 || rest[open+1+end] != '}' {
			return EndpointTemplate{}, fmt.Errorf("endpoint template %q: unclosed '{'", s)
		}
		name := rest[open+1 : open+1+end]
		p, err := parsePlaceholder(name)
		if err != nil {
			return EndpointTemplate{}, fmt.Errorf("endpoint template %q: %w", s, err)
		}
		t.parts = append(t.parts, p)
		rest = rest[open+1+end+1:]
	}
	if len(t.parts) == 0 {
		return EndpointTemplate{}, errors.New("endpoint template is empty")
	}
	// Render with a sample value so a template that can never yield a valid
	// URL (wrong scheme, no host) is refused when configured, not at use.
	// "0" fits every URL position a placeholder can sensibly take, port
	// included.
	if _, err := t.render(func(string) (string, bool) { return "0", true }, "0"); err != nil {
		return EndpointTemplate{}, fmt.Errorf("endpoint template %q: %w", s, err)
	}
	return t, nil
}

func parsePlaceholder(name string) (templatePart, error) {
	switch {
	case name == "namespace":
		return templatePart{namespace: true}, nil
	case name == "instance":
		return templatePart{label: InstanceLabel}, nil
	case strings.HasPrefix(name, "label:"):
		key := strings.TrimPrefix(name, "label:")
		if !validLabelKey(key) {
			return templatePart{}, fmt.Errorf("invalid label key %q in {%s}", key, name)
		}
		return templatePart{label: key}, nil
	}
	return templatePart{}, fmt.Errorf("unknown placeholder {%s}: use {namespace}, {instance} or {label:<key>}", name)
}

// String returns the template as written.
func (t EndpointTemplate) String() string { return t.raw }

// Render fills the placeholders from labels and namespace and returns the
// PD URL. Substituted values must look like Kubernetes label values (or
// namespace names): a label is set by whoever creates the pod, and must not
// be able to point the controller at a different host or path.
func (t EndpointTemplate) Render(labels map[string]string, namespace string) (string, error) {
	if len(t.parts) == 0 {
		return "", errors.New("render endpoint template: template is empty")
	}
	lookup := func(key string) (string, bool) {
		v, ok := labels[key]
		return v, ok
	}
	out, err := t.render(lookup, namespace)
	if err != nil {
		return "", fmt.Errorf("render endpoint template %q: %w", t.raw, err)
	}
	return out, nil
}

func (t EndpointTemplate) render(lookup func(string) (string, bool), namespace string) (string, error) {
	var b strings.Builder
	for _, p := range t.parts {
		switch {
		case p.namespace:
			if !validValue(namespace) {
				return "", fmt.Errorf("namespace %q is not a valid name", namespace)
			}
			b.WriteString(namespace)
		case p.label != "":
			v, ok := lookup(p.label)
			if !ok || v == "" {
				return "", fmt.Errorf("label %q is missing", p.label)
			}
			if !validValue(v) {
				return "", fmt.Errorf("label %q has value %q, not a valid label value", p.label, v)
			}
			b.WriteString(v)
		default:
			b.WriteString(p.literal)
		}
	}
	out := b.String()
	if _, err := parseBaseURL(out); err != nil {
		return "", err
	}
	return out, nil
}

// validValue accepts Kubernetes label values (and so namespace names):
// alphanumerics with '-', '_', '.' inside, at most 63 characters. None of
// them can end a host or start a path, user info or port in a URL.
func validValue(v string) bool {
	if v == "" || len(v) > 63 {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || i == len(v)-1 || (c != '-' && c != '_' && c != '.')) {
			return false
		}
	}
	return true
}

// validLabelKey accepts `[prefix/]name` label keys.
func validLabelKey(k string) bool {
	prefix, name, found := strings.Cut(k, "/")
	if found && (prefix == "" || strings.Contains(name, "/")) {
		return false
	}
	if !found {
		name, prefix = prefix, ""
	}
	if !validValue(name) {
		return false
	}
	for _, c := range prefix {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
