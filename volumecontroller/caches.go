package volumecontroller

import (
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Caches are the stores the controller reads its decisions from, for a
// caller that fills them itself instead of informers (a simulation that
// replays a history, a test that decides when caches catch up). Stores made
// by NewCaches tell the controller about each change, as informers do.
type Caches struct {
	PVs, PVCs, Pods, Nodes cache.Indexer
}

// NewCaches returns empty stores carrying the indexes the controller uses.
func NewCaches() *Caches {
	ns := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}
	return &Caches{
		PVs:   &notifying{Indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{pvsByNode: pvNode})},
		PVCs:  &notifying{Indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, ns)},
		Pods:  &notifying{Indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, podsByClaim: claimsOfPod})},
		Nodes: &notifying{Indexer: cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})},
	}
}

func (c *Controller) useCaches(cs *Caches) {
	c.pvIndex, c.podIndexes = cs.PVs, []cache.Indexer{cs.Pods}
	c.pvLister = corelisters.NewPersistentVolumeLister(cs.PVs)
	c.podLister = corelisters.NewPodLister(cs.Pods)
	c.pvcLister = corelisters.NewPersistentVolumeClaimLister(cs.PVCs)
	c.nodeLister = corelisters.NewNodeLister(cs.Nodes)
	for idx, h := range map[cache.Indexer]cache.ResourceEventHandler{
		cs.PVs: c.handler(c.enqueuePV), cs.PVCs: c.handler(c.enqueueClaim),
		cs.Pods: c.handler(c.enqueuePod), cs.Nodes: c.nodeHandler(),
	} {
		if n, ok := idx.(*notifying); ok {
			n.set(h)
		}
	}
}

// notifying is a store that calls a handler on every change, the way an
// informer does after updating its store.
type notifying struct {
	cache.Indexer
	mu sync.Mutex
	h  cache.ResourceEventHandler
}

func (n *notifying) set(h cache.ResourceEventHandler) {
	n.mu.Lock()
	n.h = h
	n.mu.Unlock()
}

func (n *notifying) handler() cache.ResourceEventHandler {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.h
}

func (n *notifying) Add(obj any) error { return n.Update(obj) }

func (n *notifying) Update(obj any) error {
	old, existed, err := n.Indexer.Get(obj)
	if err != nil {
		return err
	}
	if err := n.Indexer.Update(obj); err != nil {
		return err
	}
	if h := n.handler(); h != nil {
		if existed {
			h.OnUpdate(old, obj)
		} else {
			h.OnAdd(obj, false)
		}
	}
	return nil
}

func (n *notifying) Delete(obj any) error {
	if err := n.Indexer.Delete(obj); err != nil {
		return err
	}
	if h := n.handler(); h != nil {
		h.OnDelete(obj)
	}
	return nil
}

// Replace swaps the whole content and reports what changed: additions,
// updates (a new resourceVersion) and deletions.
func (n *notifying) Replace(list []any, rv string) error {
	old := map[string]any{}
	for _, o := range n.Indexer.List() {
		if k, err := cache.MetaNamespaceKeyFunc(o); err == nil {
			old[k] = o
		}
	}
	if err := n.Indexer.Replace(list, rv); err != nil {
		return err
	}
	h := n.handler()
	if h == nil {
		return nil
	}
	for _, o := range list {
		k, err := cache.MetaNamespaceKeyFunc(o)
		if err != nil {
			continue
		}
		prev, existed := old[k]
		delete(old, k)
		switch {
		case !existed:
			h.OnAdd(o, false)
		case resourceVersion(prev) != resourceVersion(o):
			h.OnUpdate(prev, o)
		}
	}
	for _, o := range old {
		h.OnDelete(o)
	}
	return nil
}

func resourceVersion(o any) string {
	m, err := meta.Accessor(o)
	if err != nil {
		return ""
	}
	return m.GetResourceVersion()
}
