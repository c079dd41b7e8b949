module crkvol/sector/_asm

go 1.26
