package discovery

import (
	"encoding/json"
	"fmt"
	"strings"
)

// SmartReport is what `smartctl --json -H -A` says of a device's health.
type SmartReport struct {
	// Known is false when smartctl could not read the device's health
	// (no SMART, a virtual device, permission): nothing is concluded.
	Known bool
	// Failing: the drive's own overall assessment failed.
	Failing bool
	// CriticalWarning is the NVMe health log's critical-warning bit field.
	CriticalWarning int
	// FailingAttributes are ATA attributes at or below their threshold now.
	FailingAttributes []string
}

// NVMe critical-warning bits (NVMe base specification, SMART / Health
// Information log).
const (
	NVMeSpareLow          = 0x01
	NVMeTemperature       = 0x02
	NVMeReliability       = 0x04
	NVMeReadOnly          = 0x08
	NVMeVolatileBackup    = 0x10
	NVMePersistentMemLost = 0x20
)

// NVMeFatal are the critical-warning bits that mean the drive can no
// longer be trusted with data; the others (spare running low, too hot)
// are warnings.
const NVMeFatal = NVMeReliability | NVMeReadOnly | NVMeVolatileBackup | NVMePersistentMemLost

type smartJSON struct {
	Smartctl struct {
		ExitStatus int `json:"exit_status"`
	} `json:"smartctl"`
	SmartStatus *struct {
		Passed bool `json:"passed"`
	} `json:"smart_status"`
	NVMe *struct {
		CriticalWarning int `json:"critical_warning"`
	} `json:"nvme_smart_health_information_log"`
	ATA *struct {
		Table []struct {
			Name       string `json:"name"`
			WhenFailed string `json:"when_failed"`
		} `json:"table"`
	} `json:"ata_smart_attributes"`
}

// smartctl exit-status bits: 0x01 bad command line, 0x02 device could not
// be opened; with either, the report says nothing about the drive.
const smartUnreadable = 0x01 | 0x02

// ParseSmartctl reads smartctl's JSON output. smartctl exits non-zero to
// report findings, so its output is read whatever its exit status.
func ParseSmartctl(out []byte) (SmartReport, error) {
	var j smartJSON
	if err := json.Unmarshal(out, &j); err != nil {
		return SmartReport{}, fmt.Errorf("smartctl output: %w", err)
	}
	if j.Smartctl.ExitStatus&smartUnreadable != 0 || j.SmartStatus == nil {
		return SmartReport{}, nil
	}
	r := SmartReport{Known: true, Failing: !j.SmartStatus.Passed}
	if j.NVMe != nil {
		r.CriticalWarning = j.NVMe.CriticalWarning
	}
	if j.ATA != nil {
		for _, a := range j.ATA.Table {
			if strings.EqualFold(a.WhenFailed, "now") {
				r.FailingAttributes = append(r.FailingAttributes, a.Name)
			}
		}
	}
	return r, nil
}

// SmartctlArgs are the arguments that produce what ParseSmartctl reads.
func SmartctlArgs(device string) []string {
	return []string{"--json=c", "-H", "-A", device}
}

// DescribeNVMeWarning names the bits of a critical-warning field.
func DescribeNVMeWarning(w int) string {
	names := []struct {
		bit  int
		name string
	}{
		{NVMeSpareLow, "spare capacity below threshold"},
		{NVMeTemperature, "temperature out of range"},
		{NVMeReliability, "reliability degraded by media or internal errors"},
		{NVMeReadOnly, "media placed in read-only mode"},
		{NVMeVolatileBackup, "volatile memory backup failed"},
		{NVMePersistentMemLost, "persistent memory region read-only or unreliable"},
	}
	var out []string
	for _, n := range names {
		if w&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ", ")
}
