module crkvol/volume/sector/_asm

go 1.26
