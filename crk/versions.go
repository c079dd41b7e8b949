package crk

import (
	"context"
	"fmt"
	"time"
)

// ListVersions returns a key's versions, newest first, with how many registrations use each.
func (s *Service) ListVersions(ctx context.Context, keyID string) ([]VersionInfo, error) {
	var out []VersionInfo
	err := s.view(ctx, func(tx storeTx) error {
		out = nil // the transaction may run again
		r, err := tx.key(keyID)
		if err != nil {
			return err
		}
		counts, err := versionRefs(tx, keyID)
		if err != nil {
			return err
		}
		for i := len(r.Versions) - 1; i >= 0; i-- {
			v := r.Versions[i]
			out = append(out, VersionInfo{
				Version:       Version{ID: v.ID, CreationDate: v.Created},
				Registrations: counts[v.ID],
				Destroyed:     v.Destroyed,
			})
		}
		return nil
	})
	if err != nil {
		return nil, s.refuse(ctx, ActionListVersions, keyID, err)
	}
	if err := s.record(s.newEvent(ctx, ActionListVersions, nil, keyID, nil)); err != nil {
		return nil, err
	}
	return out, nil
}

func versionRefs(tx storeTx, keyID string) (map[string]int, error) {
	regs, err := tx.keyRegs(keyID)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, reg := range regs {
		counts[reg.VersionID]++
	}
	return counts, nil
}

// PruneResult reports what Prune did.
type PruneResult struct {
	// Destroyed lists the versions whose material was destroyed now.
	Destroyed []string
	// Referenced lists older versions kept because registrations still use them.
	Referenced []string
}

// Prune destroys the material of every older version of a root key that no registration
// references (beyond Key Protect, which keeps all versions). Ciphertexts made with a pruned
// version can no longer be unwrapped; the latest version is never pruned.
func (s *Service) Prune(ctx context.Context, keyID string) (PruneResult, error) {
	var res PruneResult
	_, err := s.mutate(ctx, ActionPrune, keyID, func(tx storeTx, r *keyRecord, _ time.Time, ev *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		counts, err := versionRefs(tx, keyID)
		if err != nil {
			return err
		}
		res = PruneResult{}
		for i := range r.Versions[:len(r.Versions)-1] {
			v := &r.Versions[i]
			switch {
			case v.Destroyed:
			case counts[v.ID] > 0:
				res.Referenced = append(res.Referenced, v.ID)
			default:
				v.Material, v.Destroyed = nil, true
				res.Destroyed = append(res.Destroyed, v.ID)
			}
		}
		ev.Reason = fmt.Sprintf("destroyed %d versions, %d still referenced", len(res.Destroyed), len(res.Referenced))
		return nil
	})
	return res, err
}

// PruneVersion destroys the material of one older version, refusing with ErrVersionInUse
// while any registration references it.
func (s *Service) PruneVersion(ctx context.Context, keyID, versionID string) error {
	_, err := s.mutate(ctx, ActionPrune, keyID, func(tx storeTx, r *keyRecord, _ time.Time, ev *Event) error {
		if err := requireRoot(r); err != nil {
			return err
		}
		v := r.version(versionID)
		if v == nil {
			return fmt.Errorf("%w: key %s has no version %s", ErrVersionNotFound, keyID, versionID)
		}
		if v.ID == r.latest().ID {
			return fmt.Errorf("%w: version %s is the latest version of key %s", ErrVersionInUse, versionID, keyID)
		}
		counts, err := versionRefs(tx, keyID)
		if err != nil {
			return err
		}
		if n := counts[versionID]; n > 0 {
			return fmt.Errorf("%w: %d registrations use version %s of key %s", ErrVersionInUse, n, versionID, keyID)
		}
		v.Material, v.Destroyed = nil, true
		ev.KeyVersion = versionID
		return nil
	})
	return err
}
