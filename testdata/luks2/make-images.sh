#!/usr/bin/env bash
# Regenerates the LUKS2 images in this folder with cryptsetup (2.6 on Debian 12), and
# images.json, which records for each image its passphrases, volume key and layout.
# The images are small: 16 KiB metadata, a small keyslots area, data at 1 MiB, 64 KiB of data.
# Usage: bash testdata/luks2/make-images.sh   (needs cryptsetup-bin; no root or device-mapper)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
command -v cryptsetup >/dev/null || { echo "make-images: cryptsetup not found (apt-get install cryptsetup-bin)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
size=$(( (1 << 20) + (64 << 10) ))
manifest=()

# make NAME UUID KEYBITS SECTOR KEYSLOTS_SIZE PASSPHRASE -- extra luksFormat args...
make() {
	local name=$1 uuid=$2 bits=$3 sector=$4 kssize=$5 pass=$6
	shift 7
	rm -f "$name.img"
	truncate -s "$size" "$name.img"
	head -c $((bits / 8)) /dev/urandom > "$tmp/$name.vk"
	printf '%s' "$pass" > "$tmp/$name.pass"
	cryptsetup luksFormat --batch-mode --type luks2 --uuid "$uuid" \
		--cipher aes-xts-plain64 --key-size "$bits" --sector-size "$sector" \
		--luks2-metadata-size 16k --luks2-keyslots-size "$kssize" \
		--volume-key-file "$tmp/$name.vk" --key-file "$tmp/$name.pass" "$@" "$name.img"
}

entry() { # NAME KEYBITS SECTOR KDF PASSPHRASES_JSON TOKENS_JSON
	manifest+=("$(printf '  {"image": "%s.img", "volume_key": "%s", "key_size": %d, "sector_size": %d, "kdf": "%s", "passphrases": %s, "tokens": %s}' \
		"$1" "$(od -An -v -tx1 "$tmp/$1.vk" | tr -d ' \n')" $(($2 / 8)) "$3" "$4" "$5" "$6")")
}

make pbkdf2-sha256-s512 3f1c2d10-0b9a-4c1e-9d1a-5a1f00000001 512 512 256k 'correct horse battery staple' -- \
	--pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 1000 --label pbkdf2-512
entry pbkdf2-sha256-s512 512 512 pbkdf2 '{"0": "correct horse battery staple"}' '[]'

make argon2id-s4096 3f1c2d10-0b9a-4c1e-9d1a-5a1f00000002 512 4096 256k 'argon2id passphrase' -- \
	--pbkdf argon2id --pbkdf-force-iterations 4 --pbkdf-memory 32 --pbkdf-parallel 1
entry argon2id-s4096 512 4096 argon2id '{"0": "argon2id passphrase"}' '[]'

make pbkdf2-sha512-token 3f1c2d10-0b9a-4c1e-9d1a-5a1f00000003 512 4096 256k 'token image' -- \
	--pbkdf pbkdf2 --hash sha512 --pbkdf-force-iterations 1000 --subsystem crkvol-test
cat > "$tmp/token.json" <<'JSON'
{"type":"crkvol-test","keyslots":["0"],"key_id":"b3b0c3e1-6d7e-4a55-8a36-0f0c1d2e3f40","ciphertext":"c2VhbGVkIGJ5IGNyeXB0c2V0dXA=","nested":{"n":1,"list":[true,null,"x/y"]}}
JSON
cryptsetup token import --token-id 0 --json-file "$tmp/token.json" pbkdf2-sha512-token.img
entry pbkdf2-sha512-token 512 4096 pbkdf2 '{"0": "token image"}' "[$(cat "$tmp/token.json")]"

# AES-128-XTS with two keyslots; the second is preferred.
make argon2i-aes128-two-slots 3f1c2d10-0b9a-4c1e-9d1a-5a1f00000004 256 512 512k 'first slot' -- \
	--pbkdf argon2i --pbkdf-force-iterations 4 --pbkdf-memory 64 --pbkdf-parallel 2
printf '%s' 'second slot' > "$tmp/second.pass"
cryptsetup luksAddKey --batch-mode --key-file "$tmp/argon2i-aes128-two-slots.pass" \
	--pbkdf pbkdf2 --hash sha256 --pbkdf-force-iterations 1000 \
	argon2i-aes128-two-slots.img "$tmp/second.pass"
cryptsetup config --priority prefer --key-slot 1 argon2i-aes128-two-slots.img
entry argon2i-aes128-two-slots 256 512 argon2i '{"0": "first slot", "1": "second slot"}' '[]'

{
	echo "["
	for i in "${!manifest[@]}"; do
		sep=","
		[ "$i" -eq $((${#manifest[@]} - 1)) ] && sep=""
		echo "${manifest[$i]}$sep"
	done
	echo "]"
} > images.json
echo "make-images: wrote ${#manifest[@]} images and images.json with $(cryptsetup --version)"
