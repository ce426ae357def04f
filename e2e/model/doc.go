// Package model is a seeded, randomized model check of tidb-localpv's
// safety invariants. It drives the real decision and action code of the
// volume-controller (two instances sharing a lease, through SyncPV) and of
// each node's agent (Reconcile, and the provisioner's Delete as the
// library calls it) through long random histories, against a fake API
// server with the semantics guards rely on, a PD with the real PD's
// lifecycle and faults, and a fake clock. Disks are real directories; the
// simulated TiKV, PD and plain programs write real files on them, which is
// the ground truth of whose data a disk holds.
//
// After every step, and at the moment each action of ours happens, the
// model checks that no wipe, release approval, claim deletion or pod
// deletion touches data still needed; that stores are offlined only while
// Disconnected or Down on a node dead by the rules; that no destructive
// action happens twice; and that every action matches a rule of
// docs/design.md. A history replays exactly from its seed:
//
//	go test ./e2e/model/ -run TestModel -seed=<seed> -v
package model
