package crk

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRegisterStoreError: a registration the store cannot read is an error of Register,
// not a registration to overwrite.
func TestRegisterStoreError(t *testing.T) {
	db := replicaDatabase(t)
	ctx := context.Background()
	svc, err := db.Open(Options{MasterKeyFile: filepath.Join(t.TempDir(), "master.key")})
	require.NoError(t, err)
	defer svc.Close()
	k, err := svc.CreateRootKey(ctx, "key")
	require.NoError(t, err)
	crn := "crn:v1:local:public:is:local:a/crkvol::volume:v1"
	_, err = db.db.Pool().Exec(ctx, `INSERT INTO crk_registrations (instance, key_id, crn, record) VALUES ($1, $2, $3, '[]')`,
		svc.Instance(), k.ID, crn)
	require.NoError(t, err)
	_, err = svc.Register(ctx, k.ID, crn, RegisterOptions{})
	require.Error(t, err)
	assert.NotErrorIs(t, err, ErrRegistrationExists)
	var raw string
	require.NoError(t, db.db.Pool().QueryRow(ctx, `SELECT record::text FROM crk_registrations WHERE instance = $1`, svc.Instance()).Scan(&raw))
	assert.Equal(t, "[]", raw, "the unreadable registration is left as it is")
}
