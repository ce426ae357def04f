package model

import (
	"errors"
	"fmt"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
)

// The fake clientset's tracker stores objects but is no API server: it
// ignores delete preconditions, resourceVersions and finalizers, assigns
// no UIDs, and lists in map order. apiServer adds what the code under test
// relies on, so that a guard which works only against the fake would fail
// here as it would against a real cluster.

// Finalizers the API server's admission adds to every PV and claim.
const (
	finalizerPV  = "kubernetes.io/pv-protection"
	finalizerPVC = "kubernetes.io/pvc-protection"
)

var (
	resPV   = corev1.SchemeGroupVersion.WithResource("persistentvolumes")
	resPVC  = corev1.SchemeGroupVersion.WithResource("persistentvolumeclaims")
	resPod  = corev1.SchemeGroupVersion.WithResource("pods")
	resNode = corev1.SchemeGroupVersion.WithResource("nodes")
)

// apiServer is an ObjectTracker with the API server's semantics for the
// parts that guards depend on: UIDs and creation times on create, a fresh
// resourceVersion on every write and a 409 for a stale one, UID and
// resourceVersion preconditions on delete, finalizers (deletion marks the
// object, the last finalizer's removal deletes it), graceful pod deletion,
// and lists sorted by namespace and name.
type apiServer struct {
	k8stesting.ObjectTracker
	clock *clocktesting.FakeClock
	uids  int
	rv    int
}

func newAPIServer(clk *clocktesting.FakeClock) *apiServer {
	return &apiServer{
		ObjectTracker: k8stesting.NewObjectTracker(scheme.Scheme, scheme.Codecs.UniversalDecoder()),
		clock:         clk,
	}
}

// hook wraps the server's answer to one request of a clientset: it may
// answer itself (an error, a cancelled context) or call next, and look at
// the result.
type hook func(a k8stesting.Action, next k8stesting.ReactionFunc) (bool, runtime.Object, error)

// clientset returns a fake clientset that reaches this server, through h
// when it is set.
func (s *apiServer) clientset(h hook) *fake.Clientset {
	cs := fake.NewClientset()
	react := k8stesting.ObjectReaction(s)
	cs.PrependReactor("*", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if h != nil {
			return h(a, react)
		}
		return react(a)
	})
	return cs
}

func (s *apiServer) nextRV() string {
	s.rv++
	return strconv.Itoa(s.rv)
}

func (s *apiServer) Create(gvr schema.GroupVersionResource, obj runtime.Object, ns string, opts ...metav1.CreateOptions) error {
	obj = obj.DeepCopyObject() // the API server never writes into the caller's object
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	if m.GetName() == "" {
		return apierrors.NewBadRequest("name is required")
	}
	s.uids++
	m.SetUID(types.UID(fmt.Sprintf("uid-%d", s.uids)))
	m.SetResourceVersion(s.nextRV())
	m.SetCreationTimestamp(metav1.NewTime(s.clock.Now()))
	m.SetDeletionTimestamp(nil)
	switch gvr {
	case resPV:
		m.SetFinalizers(appendOnce(m.GetFinalizers(), finalizerPV))
	case resPVC:
		m.SetFinalizers(appendOnce(m.GetFinalizers(), finalizerPVC))
	}
	return s.ObjectTracker.Create(gvr, obj, ns, opts...)
}

func (s *apiServer) Update(gvr schema.GroupVersionResource, obj runtime.Object, ns string, opts ...metav1.UpdateOptions) error {
	return s.write(gvr, obj.DeepCopyObject(), ns)
}

// Patch receives the object with the patch applied (the reaction's own
// copy, which it returns): a resourceVersion in the patch has replaced the
// stored one, which is how a stale one shows.
func (s *apiServer) Patch(gvr schema.GroupVersionResource, obj runtime.Object, ns string, _ ...metav1.PatchOptions) error {
	return s.write(gvr, obj, ns)
}

func (s *apiServer) write(gvr schema.GroupVersionResource, obj runtime.Object, ns string) error {
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	cur, err := s.ObjectTracker.Get(gvr, ns, m.GetName())
	if err != nil {
		return err
	}
	cm, _ := meta.Accessor(cur)
	if rv := m.GetResourceVersion(); rv != "" && rv != cm.GetResourceVersion() {
		return apierrors.NewConflict(gvr.GroupResource(), m.GetName(), fmt.Errorf("the object has been modified; please apply your changes to the latest version and try again"))
	}
	// Fields the server owns.
	m.SetUID(cm.GetUID())
	m.SetCreationTimestamp(cm.GetCreationTimestamp())
	m.SetDeletionTimestamp(cm.GetDeletionTimestamp())
	m.SetResourceVersion(s.nextRV())
	if m.GetDeletionTimestamp() != nil && len(m.GetFinalizers()) == 0 {
		return s.ObjectTracker.Delete(gvr, ns, m.GetName())
	}
	return s.ObjectTracker.Update(gvr, obj.DeepCopyObject(), ns)
}

func (s *apiServer) Delete(gvr schema.GroupVersionResource, ns, name string, opts ...metav1.DeleteOptions) error {
	if name == "" {
		return errEmptyName
	}
	cur, err := s.ObjectTracker.Get(gvr, ns, name)
	if err != nil {
		return err
	}
	m, _ := meta.Accessor(cur)
	var o metav1.DeleteOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if p := o.Preconditions; p != nil {
		if p.UID != nil && *p.UID != m.GetUID() {
			return apierrors.NewConflict(gvr.GroupResource(), name, fmt.Errorf("precondition failed: UID in precondition: %s, UID in object meta: %s", *p.UID, m.GetUID()))
		}
		if p.ResourceVersion != nil && *p.ResourceVersion != m.GetResourceVersion() {
			return apierrors.NewConflict(gvr.GroupResource(), name, fmt.Errorf("precondition failed: ResourceVersion in precondition: %s, ResourceVersion in object meta: %s", *p.ResourceVersion, m.GetResourceVersion()))
		}
	}
	force := o.GracePeriodSeconds != nil && *o.GracePeriodSeconds == 0
	if gvr == resPod && !force {
		// Graceful deletion: a scheduled pod is marked and its kubelet
		// removes it once the containers stopped; a dead node's kubelet
		// never does.
		if pod := cur.(*corev1.Pod); pod.Spec.NodeName != "" {
			return s.markDeleted(gvr, cur, ns)
		}
	}
	if len(m.GetFinalizers()) > 0 {
		return s.markDeleted(gvr, cur, ns)
	}
	return s.ObjectTracker.Delete(gvr, ns, name)
}

func (s *apiServer) markDeleted(gvr schema.GroupVersionResource, obj runtime.Object, ns string) error {
	m, _ := meta.Accessor(obj)
	if m.GetDeletionTimestamp() != nil {
		return nil
	}
	now := metav1.NewTime(s.clock.Now())
	m.SetDeletionTimestamp(&now)
	m.SetResourceVersion(s.nextRV())
	return s.ObjectTracker.Update(gvr, obj, ns)
}

// Get refuses an empty name as client-go does ("resource name may not be
// empty"); the fake tracker would answer NotFound, which reads as "gone".
func (s *apiServer) Get(gvr schema.GroupVersionResource, ns, name string, opts ...metav1.GetOptions) (runtime.Object, error) {
	if name == "" {
		return nil, errEmptyName
	}
	return s.ObjectTracker.Get(gvr, ns, name, opts...)
}

var errEmptyName = errors.New("resource name may not be empty")

func (s *apiServer) List(gvr schema.GroupVersionResource, gvk schema.GroupVersionKind, ns string, opts ...metav1.ListOptions) (runtime.Object, error) {
	list, err := s.ObjectTracker.List(gvr, gvk, ns, opts...)
	if err != nil {
		return nil, err
	}
	items, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	sort.SliceStable(items, func(i, j int) bool {
		a, _ := meta.Accessor(items[i])
		b, _ := meta.Accessor(items[j])
		if a.GetNamespace() != b.GetNamespace() {
			return a.GetNamespace() < b.GetNamespace()
		}
		return a.GetName() < b.GetName()
	})
	if err := meta.SetList(list, items); err != nil {
		return nil, err
	}
	return list, nil
}

func appendOnce(list []string, s string) []string {
	for _, v := range list {
		if v == s {
			return list
		}
	}
	return append(list, s)
}

func removeString(list []string, s string) []string {
	out := list[:0:0]
	for _, v := range list {
		if v != s {
			out = append(out, v)
		}
	}
	return out
}
