package main

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/tidb-localpv/tidb-localpv/provisioner/apis/v1alpha1"
)

// This file reads the Kubernetes API calls out of Go source for
// rbac_test.go.

// callsIn lists the API calls of the Go files (tests excluded) of a
// directory, or of one file, each with where it is made.
func callsIn(t *testing.T, path string) map[permission][]string {
	t.Helper()
	dir, only := path, ""
	if strings.HasSuffix(path, ".go") {
		dir, only = filepath.Dir(path), filepath.Base(path)
	}
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, dir, func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go") && (only == "" || fi.Name() == only)
	}, 0)
	require.NoError(t, err)
	out := map[permission][]string{}
	for _, pkg := range pkgs {
		r := newReader(pkg)
		for _, f := range pkg.Files {
			for _, decl := range f.Decls {
				fn, ok := decl.(*ast.FuncDecl)
				if !ok || fn.Body == nil {
					continue
				}
				for _, c := range r.calls(fn) {
					where := fset.Position(c.pos)
					out[c.permission] = append(out[c.permission], fmt.Sprintf("%s:%d", filepath.Base(where.Filename), where.Line))
				}
				for _, u := range r.unresolved {
					t.Errorf("%s: cannot tell which resource %s reaches; teach rbac_test.go", fset.Position(u.Pos()), render(u))
				}
				r.unresolved = nil
			}
		}
	}
	return out
}

// typedResources are the typed clients' resource accessors.
var typedResources = map[string]schema.GroupResource{
	"PersistentVolumes":      {Resource: "persistentvolumes"},
	"PersistentVolumeClaims": {Resource: "persistentvolumeclaims"},
	"Pods":                   {Resource: "pods"},
	"Nodes":                  {Resource: "nodes"},
	"Events":                 {Resource: "events"},
	"ConfigMaps":             {Resource: "configmaps"},
	"StorageClasses":         {Group: "storage.k8s.io", Resource: "storageclasses"},
	"Leases":                 {Group: "coordination.k8s.io", Resource: "leases"},
}

// clientVerbs are the client methods that are API verbs; the index is where
// their variadic subresources start.
var clientVerbs = map[string]struct {
	verb        string
	subresource int
}{
	"Get": {"get", 3}, "List": {"list", -1}, "Watch": {"watch", -1},
	"Create": {"create", 3}, "Update": {"update", 3}, "UpdateStatus": {"update", -1},
	"Patch": {"patch", 5}, "Apply": {"patch", -1}, "Delete": {"delete", 3}, "DeleteCollection": {"deletecollection", -1},
}

type call struct {
	permission
	pos token.Pos
}

// reader resolves, within one package, which resource a client expression
// reaches: through local variables, package constants, map literals and
// functions that return a GroupVersionResource.
type reader struct {
	consts     map[string]string
	maps       map[string][]string
	funcs      map[string]*ast.FuncDecl
	locals     map[string][]ast.Expr
	unresolved []ast.Expr
}

func newReader(pkg *ast.Package) *reader {
	r := &reader{consts: map[string]string{}, maps: map[string][]string{}, funcs: map[string]*ast.FuncDecl{}}
	for _, f := range pkg.Files {
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if d.Recv == nil {
					r.funcs[d.Name.Name] = d
				}
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					vs, ok := spec.(*ast.ValueSpec)
					if !ok {
						continue
					}
					for i, name := range vs.Names {
						if i >= len(vs.Values) {
							continue
						}
						switch v := vs.Values[i].(type) {
						case *ast.BasicLit:
							if s, err := strconv.Unquote(v.Value); err == nil {
								r.consts[name.Name] = s
							}
						case *ast.CompositeLit:
							for _, elt := range v.Elts {
								if kv, ok := elt.(*ast.KeyValueExpr); ok {
									r.maps[name.Name] = append(r.maps[name.Name], r.strings(kv.Value)...)
								}
							}
						}
					}
				}
			}
		}
	}
	return r
}

// calls lists the API calls of one function.
func (r *reader) calls(fn *ast.FuncDecl) []call {
	r.locals = map[string][]ast.Expr{}
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		if as, ok := n.(*ast.AssignStmt); ok && len(as.Rhs) == 1 {
			// x := expr, and x, err := f(…): x takes the (first) value.
			if id, ok := as.Lhs[0].(*ast.Ident); ok {
				r.locals[id.Name] = append(r.locals[id.Name], as.Rhs[0])
			}
		}
		return true
	})
	var out []call
	receivers := map[ast.Expr]bool{} // client expressions that a verb is called on
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		ce, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := ce.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		switch name := sel.Sel.Name; {
		case name == "Informer" || name == "Lister":
			for _, gr := range r.informer(sel.X) {
				out = append(out, call{permission{gr.Group, gr.Resource, "list"}, ce.Pos()}, call{permission{gr.Group, gr.Resource, "watch"}, ce.Pos()})
			}
		case clientVerbs[name].verb != "":
			targets, isClient := r.client(sel.X)
			if !isClient {
				return true
			}
			receivers[sel.X] = true
			v := clientVerbs[name]
			sub := ""
			if name == "UpdateStatus" {
				sub = "status"
			} else if v.subresource >= 0 && len(ce.Args) > v.subresource {
				sub = strings.Join(r.strings(ce.Args[v.subresource]), "")
			}
			for _, gr := range targets {
				res := gr.Resource
				if sub != "" {
					res += "/" + sub
				}
				out = append(out, call{permission{gr.Group, res, v.verb}, ce.Pos()})
			}
		}
		return true
	})
	// An events client handed to a recorder's sink rather than called
	// directly: client-go's recorder creates events and patches repeats.
	ast.Inspect(fn.Body, func(n ast.Node) bool {
		ce, ok := n.(*ast.CallExpr)
		if !ok || receivers[ce] {
			return true
		}
		if sel, ok := ce.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Events" && chainHas(sel.X, "CoreV1") {
			out = append(out, call{permission{"", "events", "create"}, ce.Pos()}, call{permission{"", "events", "patch"}, ce.Pos()})
		}
		return true
	})
	return out
}

// client reports whether e is an API client for some resources, and which.
func (r *reader) client(e ast.Expr) ([]schema.GroupResource, bool) {
	switch e := e.(type) {
	case *ast.Ident:
		var out []schema.GroupResource
		found := false
		for _, v := range r.locals[e.Name] {
			if grs, ok := r.client(v); ok {
				out, found = append(out, grs...), true
			}
		}
		return out, found
	case *ast.CallExpr:
		sel, ok := e.Fun.(*ast.SelectorExpr)
		if !ok {
			return nil, false
		}
		switch name := sel.Sel.Name; {
		case typedResources[name].Resource != "" && chainHas(sel.X, "CoreV1", "StorageV1", "CoordinationV1"):
			return []schema.GroupResource{typedResources[name]}, true
		case name == "Namespace":
			return r.client(sel.X)
		case name == "Resource" && len(e.Args) == 1:
			return r.gvrs(e.Args[0]), true
		}
	}
	return nil, false
}

// informer lists the resources an informer or lister accessor reaches.
func (r *reader) informer(e ast.Expr) []schema.GroupResource {
	ce, ok := e.(*ast.CallExpr)
	if !ok {
		return nil
	}
	sel, ok := ce.Fun.(*ast.SelectorExpr)
	if !ok {
		return nil
	}
	switch {
	case sel.Sel.Name == "ForResource" && len(ce.Args) == 1:
		return r.gvrs(ce.Args[0])
	case typedResources[sel.Sel.Name].Resource != "" && chainHas(sel.X, "Core", "Storage", "Coordination"):
		return []schema.GroupResource{typedResources[sel.Sel.Name]}
	}
	return nil
}

// gvrs resolves a GroupVersionResource expression.
func (r *reader) gvrs(e ast.Expr) []schema.GroupResource {
	switch e := e.(type) {
	case *ast.SelectorExpr:
		if render(e) == "v1alpha1.Resource" {
			return []schema.GroupResource{v1alpha1.Resource.GroupResource()}
		}
	case *ast.Ident:
		var out []schema.GroupResource
		for _, v := range r.locals[e.Name] {
			out = append(out, r.gvrs(v)...)
		}
		if len(out) > 0 {
			return out
		}
	case *ast.CompositeLit:
		var group, resource []string
		for _, elt := range e.Elts {
			kv, ok := elt.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			switch render(kv.Key) {
			case "Group":
				group = r.strings(kv.Value)
			case "Resource":
				resource = r.strings(kv.Value)
			}
		}
		if len(group) > 0 && len(resource) > 0 {
			return cross(group, resource)
		}
	case *ast.CallExpr:
		sel, ok := e.Fun.(*ast.SelectorExpr)
		if ok && sel.Sel.Name == "WithResource" && len(e.Args) == 1 {
			// gvr.GroupVersion().WithResource(res), or gv.WithResource(res)
			// for a gv parsed from an owner reference of v2Group.
			var groups []string
			switch base := sel.X.(type) {
			case *ast.CallExpr: // gvr.GroupVersion()
				if s, ok := base.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "GroupVersion" {
					for _, gr := range r.gvrs(s.X) {
						groups = append(groups, gr.Group)
					}
				}
			case *ast.Ident: // gv, err := schema.ParseGroupVersion(ref.APIVersion)
				for _, v := range r.locals[base.Name] {
					if c, ok := v.(*ast.CallExpr); ok && render(c.Fun) == "schema.ParseGroupVersion" && r.consts["v2Group"] != "" {
						// volumecontroller: v2Instance admits only owner
						// references of TiDB Operator v2's group.
						groups = append(groups, r.consts["v2Group"])
					}
				}
			}
			if res := r.strings(e.Args[0]); len(groups) > 0 && len(res) > 0 {
				return cross(groups, res)
			}
		}
		if id, ok := e.Fun.(*ast.Ident); ok && r.funcs[id.Name] != nil {
			// A function of the package returning a GVR: what it returns.
			var out []schema.GroupResource
			saved := r.locals
			r.calls(r.funcs[id.Name]) // its own locals
			ast.Inspect(r.funcs[id.Name].Body, func(n ast.Node) bool {
				if ret, ok := n.(*ast.ReturnStmt); ok && len(ret.Results) > 0 {
					out = append(out, r.gvrs(ret.Results[0])...)
				}
				return true
			})
			r.locals = saved
			if len(out) > 0 {
				return out
			}
		}
	}
	if cl, ok := e.(*ast.CompositeLit); ok && len(cl.Elts) == 0 {
		return nil // schema.GroupVersionResource{}: an error return
	}
	r.unresolved = append(r.unresolved, e)
	return nil
}

// strings resolves a string expression to its possible values.
func (r *reader) strings(e ast.Expr) []string {
	switch e := e.(type) {
	case *ast.BasicLit:
		if s, err := strconv.Unquote(e.Value); err == nil {
			return []string{s}
		}
	case *ast.Ident:
		if s, ok := r.consts[e.Name]; ok {
			return []string{s}
		}
	case *ast.IndexExpr:
		if id, ok := e.X.(*ast.Ident); ok {
			return r.maps[id.Name]
		}
	}
	return nil
}

// chainHas reports whether a call chain (a.b().c().d) calls one of names.
func chainHas(e ast.Expr, names ...string) bool {
	for {
		switch x := e.(type) {
		case *ast.CallExpr:
			if sel, ok := x.Fun.(*ast.SelectorExpr); ok {
				if slices.Contains(names, sel.Sel.Name) {
					return true
				}
				e = sel.X
				continue
			}
			return false
		case *ast.SelectorExpr:
			e = x.X
		default:
			return false
		}
	}
}

func cross(groups, resources []string) []schema.GroupResource {
	var out []schema.GroupResource
	for _, g := range groups {
		for _, res := range resources {
			out = append(out, schema.GroupResource{Group: g, Resource: res})
		}
	}
	return out
}

func render(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.SelectorExpr:
		return render(e.X) + "." + e.Sel.Name
	case *ast.CallExpr:
		return render(e.Fun) + "(…)"
	default:
		return fmt.Sprintf("%T", e)
	}
}

func sortedPermissions[V any](m map[permission]V) []permission {
	out := make([]permission, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b permission) int { return strings.Compare(a.String(), b.String()) })
	return out
}
