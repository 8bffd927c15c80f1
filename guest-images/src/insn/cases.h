/*
 * Instruction test cases: an X-macro list, included several times by
 * harness.h with different definitions of
 *   T(name, "asm snippet", eax, ebx, ecx, edx, esi, edi, eflags_in, undef)
 * EBP starts at DBP (inside MEM), ESP at STK. `undef` lists the flags the
 * manuals call undefined for that instruction; they are not compared.
 * Snippets are AT&T asm; MEM/STK/SCR are assembler symbols too.
 * Helper macros below expand one line into many cases.
 */
#ifndef CASES_MACROS
#define CASES_MACROS
/* two cases: all flags clear / all set (catches carry-in and preserved flags) */
#define RR(n, code, a, b, U) \
    T(n##_f0, code, a, b, 0x0000beef, 0x12345678, DSI, DDI, 0, U) \
    T(n##_f1, code, a, b, 0x0000beef, 0x12345678, DSI, DDI, ALLF, U)
/* value pairs with interesting carries/overflows in every byte/word */
#define PAIRS(M, n, code, U) \
    M(n##_p0, code, 0x00000000, 0x00000000, U) \
    M(n##_p1, code, 0x7fffffff, 0x00000001, U) \
    M(n##_p2, code, 0x80000000, 0xffffffff, U) \
    M(n##_p3, code, 0x12345678, 0x9abcdef0, U) \
    M(n##_p4, code, 0x7f7f7f7f, 0x01010101, U) \
    M(n##_p5, code, 0x80808080, 0x80808080, U) \
    M(n##_p6, code, 0x0f0f0f0f, 0x01010101, U) \
    M(n##_p7, code, 0xfedcba98, 0xfedcba98, U) \
    M(n##_p8, code, 0x55aa55aa, 0xaa55aa56, U)
#define PAIRS3(M, n, code, U) \
    M(n##_p1, code, 0x7fffffff, 0x00000001, U) \
    M(n##_p3, code, 0x12345678, 0x9abcdef0, U) \
    M(n##_p5, code, 0x80808080, 0x80808080, U)
/* ALU op in all register widths incl. high-byte registers */
#define ALU(n, op, U) \
    PAIRS(RR, n##32, op "l %ebx, %eax", U) \
    PAIRS(RR, n##16, op "w %bx, %ax", U) \
    PAIRS(RR, n##8, op "b %bl, %al", U) \
    PAIRS(RR, n##8h, op "b %bh, %ah", U) \
    PAIRS3(RR, n##8cd, op "b %ch, %dh", U) \
    PAIRS3(RR, n##8x, op "b %dl, %bh", U) \
    PAIRS3(RR, n##i32, op "l $0x7ffffffe, %eax", U) \
    PAIRS3(RR, n##i8s, op "l $-2, %ebx", U) \
    PAIRS3(RR, n##i16, op "w $0x8001, %ax", U) \
    PAIRS3(RR, n##i8, op "b $0x81, %ah", U) \
    PAIRS3(RR, n##ial, op "b $0x7f, %al", U)
/*
 * Memory forms: every addressing mode. Registers: EAX value, EBX=MEM+0x10,
 * ECX=3 (index), EDX=MEM-0x200 (for disp32), ESI=MEM+0x30, EDI=5 (index),
 * EBP=DBP=MEM+0x40.
 */
#define MT(n, code, fl, U) \
    T(n, code, 0x87654321, MEM + 0x10, 3, MEM - 0x200, MEM + 0x30, 5, fl, U)
#define MEMOPS(n, A) \
    MT(n##_add, "addl %eax, " A, 0, 0) \
    MT(n##_sub, "subl " A ", %eax", ALLF, 0) \
    MT(n##_adcb, "adcb %ah, " A, ALLF, 0) \
    MT(n##_orw, "orw " A ", %ax", 0, AF) \
    MT(n##_cmpi, "cmpl $0x12345678, " A, 0, 0) \
    MT(n##_andi8, "andl $-16, " A, ALLF, AF) \
    MT(n##_load, "movl " A ", %eax", 0, 0) \
    MT(n##_store, "movw %ax, " A, 0, 0)
/*
 * Shifts/rotates. Undefined flags depend on the masked count c:
 * shifts: AF always, OF unless c==1, CF for SHL/SHR when c>=width;
 * rotates: OF unless c==1. Nothing changes when c==0.
 */
#define C5(c) ((c) & 31)
#define U_SH(c, w)  (C5(c) == 0 ? 0 : AF | (C5(c) != 1 ? OF : 0) | (C5(c) >= (w) ? CF : 0))
#define U_SAR(c, w) (C5(c) == 0 ? 0 : AF | (C5(c) != 1 ? OF : 0))
#define U_ROT(c, w) (C5(c) == 0 ? 0 : (C5(c) != 1 ? OF : 0))
/* op by CL with a value whose top bits differ per width, both flag states */
#define SHC(n, op, sfx, reg, w, UF, c) \
    T(n##_f0, op sfx " %cl, " reg, 0xc3a5f00f, 0x4b7e81c3, c, 0x12345678, DSI, DDI, 0, UF(c, w)) \
    T(n##_f1, op sfx " %cl, " reg, 0x4b7e81c3, 0xc3a5f00f, c, 0x12345678, DSI, DDI, ALLF, UF(c, w))
#define SHI(n, op, sfx, reg, w, UF, c) \
    T(n##_f0, op sfx " $" #c ", " reg, 0xc3a5f00f, 0x4b7e81c3, 0, 0x12345678, DSI, DDI, 0, UF(c, w)) \
    T(n##_f1, op sfx " $" #c ", " reg, 0x4b7e81c3, 0xc3a5f00f, 0, 0x12345678, DSI, DDI, ALLF, UF(c, w))
#define SH1(n, op, sfx, reg, w, UF) \
    T(n##_f0, op sfx " " reg, 0xc3a5f00f, 0x4b7e81c3, 0, 0x12345678, DSI, DDI, 0, UF(1, w)) \
    T(n##_f1, op sfx " " reg, 0x4b7e81c3, 0xc3a5f00f, 0, 0x12345678, DSI, DDI, ALLF, UF(1, w)) \
    T(n##_g0, op sfx " " reg, 0x40404040, 0x4b7e81c3, 0, 0x12345678, DSI, DDI, 0, UF(1, w)) \
    T(n##_g1, op sfx " " reg, 0x80808080, 0xc3a5f00f, 0, 0x12345678, DSI, DDI, ALLF, UF(1, w))
#define SHW(n, op, sfx, reg, w, UF) \
    SH1(n##_1, op, sfx, reg, w, UF) \
    SHI(n##_i0, op, sfx, reg, w, UF, 0) \
    SHI(n##_i3, op, sfx, reg, w, UF, 3) \
    SHI(n##_i7, op, sfx, reg, w, UF, 7) \
    SHI(n##_i31, op, sfx, reg, w, UF, 31) \
    SHC(n##_c0, op, sfx, reg, w, UF, 0) \
    SHC(n##_c1, op, sfx, reg, w, UF, 1) \
    SHC(n##_c5, op, sfx, reg, w, UF, 5) \
    SHC(n##_c8, op, sfx, reg, w, UF, 8) \
    SHC(n##_c9, op, sfx, reg, w, UF, 9) \
    SHC(n##_c15, op, sfx, reg, w, UF, 15) \
    SHC(n##_c16, op, sfx, reg, w, UF, 16) \
    SHC(n##_c17, op, sfx, reg, w, UF, 17) \
    SHC(n##_c31, op, sfx, reg, w, UF, 31) \
    SHC(n##_c32, op, sfx, reg, w, UF, 32) \
    SHC(n##_c33, op, sfx, reg, w, UF, 33)
#define SHOP(n, op, UF) \
    SHW(n##32, op, "l", "%eax", 32, UF) \
    SHW(n##16, op, "w", "%bx", 16, UF) \
    SHW(n##8, op, "b", "%al", 8, UF) \
    SHC(n##8h_c3, op, "b", "%ah", 8, UF, 3) \
    SHI(n##m_i5, op, "l", "MEM+8", 32, UF, 5) \
    SHC(n##mb_c2, op, "b", "MEM+9", 8, UF, 2)
/* SHLD/SHRD: counts > 16 on 16-bit operands are undefined, left out */
#define U_DSH(c) (C5(c) == 0 ? 0 : AF | (C5(c) != 1 ? OF : 0))
#define DSH(n, code, c, fl) \
    T(n, code, 0x12345678, 0x9abcdef0, c, MEM, DSI, DDI, fl, U_DSH(c))
#define DSHALL(n, op) \
    DSH(n##32_c0, op "l %cl, %ebx, %eax", 0, ALLF) \
    DSH(n##32_c1, op "l %cl, %ebx, %eax", 1, 0) \
    DSH(n##32_c8, op "l %cl, %ebx, %eax", 8, ALLF) \
    DSH(n##32_c31, op "l %cl, %ebx, %eax", 31, 0) \
    DSH(n##32_c32, op "l %cl, %ebx, %eax", 32, ALLF) \
    DSH(n##32_c36, op "l %cl, %ebx, %eax", 36, 0) \
    DSH(n##32_i4, op "l $4, %ebx, %eax", 4, ALLF) \
    DSH(n##32_i1, op "l $1, %eax, %ebx", 1, 0) \
    DSH(n##16_c1, op "w %cl, %bx, %ax", 1, ALLF) \
    DSH(n##16_c4, op "w %cl, %bx, %ax", 4, 0) \
    DSH(n##16_c15, op "w %cl, %bx, %ax", 15, ALLF) \
    DSH(n##16_i7, op "w $7, %ax, %bx", 7, 0) \
    DSH(n##m_c12, op "l %cl, %ebx, MEM+4", 12, 0) \
    DSH(n##m_i3, op "l $3, %eax, MEM+16", 3, ALLF)
/* multiply/divide: input pairs (EAX, EBX) plus EDX for divides */
#define MULU (SF | ZF | AF | PF)
#define MUL4(n, code) \
    T(n##_a, code, 0x12345678, 0x9abcdef0, 0, 0x11111111, DSI, DDI, 0, MULU) \
    T(n##_b, code, 0x000000ff, 0xffffffff, 0, 0, DSI, DDI, ALLF, MULU) \
    T(n##_c, code, 0x00000007, 0x00000003, 0, 0, DSI, DDI, ALLF, MULU) \
    T(n##_d, code, 0x80008080, 0x80008080, 0, 0, DSI, DDI, 0, MULU) \
    T(n##_e, code, 0xfffffffe, 0x00000003, 0, 0, DSI, DDI, 0, MULU)
#define DIVT(n, code, a, b, d) T(n, code, a, b, 0, d, DSI, DDI, 0, ALLF)
/* condition codes, in encoding order */
#define CCLIST(M, n, fl) \
    M(n##_o, "o", fl) M(n##_no, "no", fl) M(n##_b, "b", fl) M(n##_ae, "ae", fl) \
    M(n##_e, "e", fl) M(n##_ne, "ne", fl) M(n##_be, "be", fl) M(n##_a, "a", fl) \
    M(n##_s, "s", fl) M(n##_ns, "ns", fl) M(n##_p, "p", fl) M(n##_np, "np", fl) \
    M(n##_l, "l", fl) M(n##_ge, "ge", fl) M(n##_le, "le", fl) M(n##_g, "g", fl)
#define CMOVT(n, cc, fl) \
    T(n, "cmov" cc "l %ebx, %eax; cmov" cc "w MEM+4, %cx", 0x11111111, 0x22222222, 0x33333333, 0, DSI, DDI, fl, 0)
#define JCCT(n, cc, fl) \
    T(n, "movl $1, %eax; j" cc " 1f; movl $2, %eax; 1:", 0, 0, 0, 0, DSI, DDI, fl, 0)
#define FLAGPATS(M, n) \
    CCLIST(M, n##_0, 0) CCLIST(M, n##_cz, CF | ZF) CCLIST(M, n##_s, SF) \
    CCLIST(M, n##_o, OF) CCLIST(M, n##_sop, SF | OF | PF)
#define SETCCALL "seto MEM; setno MEM+1; setb MEM+2; setae MEM+3; sete MEM+4; " \
    "setne MEM+5; setbe MEM+6; seta MEM+7; sets MEM+8; setns MEM+9; setp MEM+10; " \
    "setnp MEM+11; setl MEM+12; setge MEM+13; setle MEM+14; setg MEM+15; setl %ah; setbe %bh"
#define SETT(n, fl) T(n, SETCCALL, 0xffffffff, 0xffffffff, 0, 0, DSI, DDI, fl, 0)
/* BT family: CF defined, ZF preserved, the rest undefined */
#define BTU (OF | SF | AF | PF)
#define BTT(n, code, a, c) \
    T(n##_f0, code, a, 0x9abcdef0, c, 0, DSI, DDI, 0, BTU) \
    T(n##_f1, code, a, 0x9abcdef0, c, 0, DSI, DDI, ALLF, BTU)
#define BTOPS(n, op) \
    BTT(n##_r3, op "l %ecx, %eax", 0x12345678, 3) \
    BTT(n##_r31, op "l %ecx, %eax", 0x82345678, 31) \
    BTT(n##_r35, op "l %ecx, %eax", 0x12345678, 35) \
    BTT(n##_rw17, op "w %cx, %ax", 0x12345672, 17) \
    BTT(n##_i35, op "l $35, %ebx", 0, 0) \
    BTT(n##_iw20, op "w $20, %bx", 0, 0) \
    BTT(n##_m37, op "l %ecx, MEM", 0, 37) \
    BTT(n##_m200, op "l %ecx, MEM", 0, 200) \
    BTT(n##_m1000, op "l %ecx, MEM", 0, 1000) \
    BTT(n##_mneg, op "l %ecx, MEM+64", 0, -77) \
    BTT(n##_mw, op "w %cx, MEM+64", 0, 0xffec) \
    BTT(n##_mi, op "l $35, MEM+4", 0, 0)
/* BSF/BSR: with a zero source the destination is undefined, so overwrite */
#define BSU (CF | OF | SF | AF | PF)
#define BSTT(n, op) \
    T(n##_a, op "l %ebx, %eax", 0, 0x00001000, 0, 0, DSI, DDI, 0, BSU) \
    T(n##_b, op "l %ebx, %eax", 0, 0x80000001, 0, 0, DSI, DDI, ALLF, BSU) \
    T(n##_c, op "l %ebx, %eax", 0, 0x00000001, 0, 0, DSI, DDI, 0, BSU) \
    T(n##_z, op "l %ebx, %eax; movl $0, %eax", 0, 0, 0, 0, DSI, DDI, 0, BSU) \
    T(n##_w, op "w %bx, %ax", 0x55555555, 0x00f00000, 0, 0, DSI, DDI, 0, BSU) \
    T(n##_w2, op "w %bx, %ax", 0x55555555, 0x0000f00f, 0, 0, DSI, DDI, ALLF, BSU) \
    T(n##_m, op "l MEM+28, %eax", 0, 0, 0, 0, DSI, DDI, 0, BSU)
/* BCD */
#define BCD2(n, code, a, U) \
    T(n##_f0, code, a, 0, 0, 0, DSI, DDI, 0, U) \
    T(n##_fca, code, a, 0, 0, 0, DSI, DDI, CF | AF, U)
#define BCDV(n, code, U) \
    BCD2(n##_00, code, 0x1200, U) BCD2(n##_09, code, 0x1209, U) \
    BCD2(n##_0a, code, 0x120a, U) BCD2(n##_99, code, 0x1299, U) \
    BCD2(n##_9a, code, 0x129a, U) BCD2(n##_f0x, code, 0x12f0, U) \
    BCD2(n##_45, code, 0x1245, U) BCD2(n##_ff, code, 0x12ff, U)
#define INCDEC(n, code) \
    T(n##_a, code, 0x7fffffff, 0x7fff7fff, 0x80008080, 0xffffffff, 0xffff, 0x7fff, 0, 0) \
    T(n##_b, code, 0xffffffff, 0xffffffff, 0x00000000, 0x80000000, 0x8000, 0x0001, ALLF, 0) \
    T(n##_c, code, 0x00000000, 0x0000007f, 0x7f7f7f7f, 0x00000001, 0x0, 0xff00, CF, 0)
/* strings: ESI=MEM, EDI=MEM+0x40 unless stated, ECX = count */
#define STR(n, code, a, c, si, di, fl) T(n, code, a, 0, c, 0, si, di, fl, 0)
#endif /* CASES_MACROS */

/* ---------------- ALU ---------------- */
ALU(add, "add", 0)
ALU(adc, "adc", 0)
ALU(sub, "sub", 0)
ALU(sbb, "sbb", 0)
ALU(and, "and", AF)
ALU(or, "or", AF)
ALU(xor, "xor", AF)
ALU(cmp, "cmp", 0)
PAIRS(RR, test32, "testl %ebx, %eax", AF)
PAIRS(RR, test16, "testw %bx, %ax", AF)
PAIRS(RR, test8, "testb %bl, %al", AF)
PAIRS(RR, test8h, "testb %bh, %ah", AF)
PAIRS3(RR, testi32, "testl $0x80000001, %eax", AF)
PAIRS3(RR, testi8, "testb $0x80, %ah", AF)
PAIRS3(RR, testm, "testl %eax, MEM+12", AF)

/* ---------------- memory addressing forms ---------------- */
MEMOPS(abs, "MEM+8")
MEMOPS(base, "(%ebx)")
MEMOPS(bd8, "4(%ebx)")
MEMOPS(bdneg, "-8(%esi)")
MEMOPS(bd32, "0x20c(%edx)")
MEMOPS(ebp0, "(%ebp)")
MEMOPS(ebpd8, "-0x14(%ebp)")
MEMOPS(sib1, "(%ebx,%ecx,1)")
MEMOPS(sib2, "(%ebx,%ecx,2)")
MEMOPS(sib4, "(%ebx,%ecx,4)")
MEMOPS(sib8d, "8(%ebx,%edi,8)")
MEMOPS(sibsi, "(%esi,%edi,2)")
MEMOPS(nobase, "MEM(,%ecx,8)")
MEMOPS(sibebp, "(%ebp,%ecx,4)")
MEMOPS(sibd32, "0x220(%edx,%ecx,4)")
MEMOPS(sibeax, "-0x87654321+MEM+0x20(%eax)")
/* [esp] forms: stack is not compared, so copy results into registers */
MT(esp0, "movl $0x89abcdef, (%esp); addl %eax, (%esp); movl (%esp), %ebx", 0, 0)
MT(esp8, "movl $0x7fffffff, 8(%esp); subl $-1, 8(%esp); movl 8(%esp), %ebx", 0, 0)
MT(espsib, "movl $0x1234, 8(%esp,%ecx,4); xorw %ax, 8(%esp,%ecx,4); movl 20(%esp), %ebx", ALLF, AF)
MT(espneg, "movl %eax, -4(%esp); movb -1(%esp), %bl; movb -4(%esp), %bh", 0, 0)

/* ---------------- INC/DEC/NEG/NOT ---------------- */
INCDEC(inc32, "incl %eax; incl %ebx; incl %ecx; incl %edx")
INCDEC(dec32, "decl %eax; decl %ebx; decl %ecx; decl %edx")
INCDEC(inc16, "incw %ax; incw %bx; incw %si; incw %di")
INCDEC(dec16, "decw %ax; decw %cx; decw %si; decw %di")
INCDEC(inc8, "incb %al; incb %bh; incb %cl")
INCDEC(dec8, "decb %ah; decb %bl; decb %ch")
INCDEC(incm, "incl MEM+8; decw MEM+12; incb MEM+4; incl %edx")
INCDEC(neg32, "negl %eax")
INCDEC(neg32b, "negl %edx")
INCDEC(neg16, "negw %bx")
INCDEC(neg8, "negb %cl")
INCDEC(neg8h, "negb %ah")
INCDEC(negm, "negl MEM+12")
INCDEC(negm0, "negl MEM")
INCDEC(not, "notl %eax; notw %bx; notb %ch; notl MEM+4; notb MEM+9")

/* ---------------- shifts and rotates ---------------- */
SHOP(shl, "shl", U_SH)
SHOP(shr, "shr", U_SH)
SHOP(sar, "sar", U_SAR)
SHOP(rol, "rol", U_ROT)
SHOP(ror, "ror", U_ROT)
SHOP(rcl, "rcl", U_ROT)
SHOP(rcr, "rcr", U_ROT)
DSHALL(shld, "shld")
DSHALL(shrd, "shrd")

/* ---------------- multiply / divide ---------------- */
MUL4(mul8, "mulb %bl")
MUL4(mul16, "mulw %bx")
MUL4(mul32, "mull %ebx")
MUL4(mulm, "mull MEM+16")
MUL4(imul8, "imulb %bl")
MUL4(imul16, "imulw %bx")
MUL4(imul32, "imull %ebx")
MUL4(imul2, "imull %ebx, %eax")
MUL4(imul2w, "imulw %bx, %ax")
MUL4(imul2m, "imull MEM+12, %eax")
MUL4(imul3, "imull $-3, %ebx, %eax")
MUL4(imul3l, "imull $0x12345, %ebx, %ecx")
MUL4(imul3w, "imulw $300, %bx, %ax")
MUL4(imul3m, "imull $7, MEM+8, %edx")
DIVT(div8, "divb %bl", 0x1234, 0x56, 0)
DIVT(div8h, "divb %bh", 0xfe00, 0xff00, 0)
DIVT(div16, "divw %bx", 0x12345678, 0x9abc, 0x1234)
DIVT(div32, "divl %ebx", 0x9abcdef0, 0x87654321, 0x12345678)
DIVT(div32b, "divl %ebx", 0xffffffff, 0xffffffff, 0xfffffffe)
DIVT(divm, "divl MEM+16", 0x87654321, 0, 0x1234)
DIVT(idiv8, "idivb %bl", 0xff80, 0x03, 0)
DIVT(idiv8n, "idivb %bl", 0x0064, 0xf9, 0)
DIVT(idiv16, "idivw %bx", 0x12345678, 0xff00, 0xffff)
DIVT(idiv32, "idivl %ebx", 0x9abcdef0, 0xffff1234, 0xffffffff)
DIVT(idiv32p, "idivl %ebx", 0x12345678, 0x00000007, 0)
DIVT(idiv32n, "idivl %ebx", 0xfffffff9, 0x00000002, 0xffffffff)
DIVT(idivm, "idivl MEM+12", 0x12345678, 0, 0x1)

/* ---------------- bit operations ---------------- */
BTOPS(bt, "bt")
BTOPS(bts, "bts")
BTOPS(btr, "btr")
BTOPS(btc, "btc")
BSTT(bsf, "bsf")
BSTT(bsr, "bsr")

/* ---------------- BCD ---------------- */
BCDV(daa, "daa", OF)
BCDV(das, "das", OF)
BCDV(aaa, "aaa", OF | SF | ZF | PF)
BCDV(aas, "aas", OF | SF | ZF | PF)
BCDV(aam, "aam", OF | AF | CF)
BCDV(aam16, "aam $16", OF | AF | CF)
BCDV(aam7, "aam $7", OF | AF | CF)
BCDV(aad, "aad", OF | AF | CF)
BCDV(aad16, "aad $16", OF | AF | CF)
BCDV(aad3, "aad $3", OF | AF | CF)

/* ---------------- conditions ---------------- */
SETT(setcc_0, 0)
SETT(setcc_c, CF)
SETT(setcc_z, ZF)
SETT(setcc_s, SF)
SETT(setcc_o, OF)
SETT(setcc_so, SF | OF)
SETT(setcc_cz, CF | ZF)
SETT(setcc_p, PF)
SETT(setcc_all, ALLF)
SETT(setcc_zso, ZF | SF | OF)
FLAGPATS(CMOVT, cmov)
FLAGPATS(JCCT, jcc)

/* ---------------- data movement ---------------- */
T(bswap, "bswap %eax; bswap %esi; bswap %edx", 0x12345678, 0, 0, 0x80000001, 0xa1b2c3d4, 0, 0, 0)
T(xchg32, "xchgl %eax, %ebx; xchgl %ecx, %edx", 1, 2, 3, 4, DSI, DDI, 0, 0)
T(xchg8, "xchgb %ah, %bl; xchgb %ch, %dh", 0x1234, 0x5678, 0x9abc, 0xdef0, DSI, DDI, 0, 0)
T(xchg16, "xchgw %ax, %dx; xchgw %si, %di", 0x11112222, 0x3, 0x4, 0x33334444, DSI, DDI, 0, 0)
T(xchgm, "xchgl %ecx, MEM+4; xchgb %al, MEM+9; xchgw MEM+14, %dx", 0xaa, 0, 0x12345678, 0x5555, DSI, DDI, ALLF, 0)
RR(xadd32, "xaddl %ebx, %eax", 0x7fffffff, 0x00000001, 0)
RR(xadd8, "xaddb %bh, %al", 0x000000f0, 0x00002000, 0)
RR(xaddm, "lock xaddl %eax, MEM+8", 0x00000001, 0, 0)
RR(xaddmw, "xaddw %ax, MEM+2", 0x00008001, 0, 0)
RR(cmpxchg_eq, "cmpxchgl %ebx, %ecx", 0x0000beef, 0x11111111, 0)
RR(cmpxchg_ne, "cmpxchgl %ebx, %ecx", 0x0000beee, 0x11111111, 0)
RR(cmpxchg8, "cmpxchgb %bl, %dl", 0x00000078, 0x000000aa, 0)
RR(cmpxchgm, "lock cmpxchgl %ebx, MEM+16", 0x12345678, 0xcafebabe, 0)
RR(cmpxchgmne, "lock cmpxchgl %ebx, MEM+16", 0x12345679, 0xcafebabe, 0)
RR(cmpxchgmw, "cmpxchgw %bx, MEM+20", 0x00000001, 0xcafebabe, 0)
T(cmpxchg8b_eq, "movl MEM+8, %eax; movl MEM+12, %edx; lock cmpxchg8b MEM+8", 0, 0x11112222, 0x33334444, 0, DSI, DDI, 0, 0)
T(cmpxchg8b_ne, "lock cmpxchg8b MEM+8", 0x1, 0x11112222, 0x33334444, 0x2, DSI, DDI, ALLF, 0)
T(cmpxchg8b_ne2, "cmpxchg8b (%esi)", 0x7fffffff, 0x11112222, 0x33334444, 0x0, MEM + 4, DDI, 0, 0)
T(movzx, "movzbl %bh, %eax; movzwl %bx, %ecx; movzbw %bl, %dx; movzbl MEM+6, %esi; movzwl MEM+7, %edi", 0, 0x1234f6f7, 0, 0, 0, 0, 0, 0)
T(movsx, "movsbl %bh, %eax; movswl %bx, %ecx; movsbw %bl, %dx; movsbl MEM+15, %esi; movswl MEM+7, %edi", 0, 0x1234f6f7, 0, 0, 0, 0, 0, 0)
T(movsx2, "movsbl %bl, %eax; movswl %bx, %ecx; movsbw %bh, %dx", 0, 0x12347f7f, 0, 0xffffffff, 0, 0, 0, 0)
T(lea1, "leal 4(%ebx,%ecx,8), %eax; leal (%ecx,%ecx,2), %edx; leal -1(%ebx), %esi; leal 0x12345678(%esi,%ebx), %edi", 0, 0x1000, 7, 0, 0, 0, 0, 0)
T(lea2, "leal MEM(,%ecx,4), %eax; leaw 2(%ebx,%ecx), %dx; leal (%ebp), %esi; leal -8(%ebp,%ebp), %edi", 0, 0xffff, 3, 0x77777777, 0, 0, ALLF, 0)
T(lea3, "leal (%eax,%eax), %eax; leal 0x80000000(%ebx), %ebx; leal 1(,%ecx,2), %ecx", 0x80000001, 0x80000000, 0xffffffff, 0, 0, 0, 0, 0)
T(xlat1, "xlat", 0x12345605, MEM, 0, 0, DSI, DDI, 0, 0)
T(xlat2, "xlat", 0x000000fe, MEM - 0x80, 0, 0, DSI, DDI, 0, 0)
T(cbw, "cbw; movl %ebx, %ecx; cbw", 0x12345680, 0x1234567f, 0, 0, DSI, DDI, 0, 0)
T(cwde, "cwde; xchgl %eax, %ebx; cwde", 0x12348000, 0x12347fff, 0, 0, DSI, DDI, 0, 0)
T(cwd, "cwd", 0x12348000, 0, 0, 0x55555555, DSI, DDI, 0, 0)
T(cwd2, "cwd", 0x12347fff, 0, 0, 0x55555555, DSI, DDI, 0, 0)
T(cdq, "cdq", 0x80000000, 0, 0, 0x55555555, DSI, DDI, 0, 0)
T(cdq2, "cdq", 0x7fffffff, 0, 0, 0x55555555, DSI, DDI, 0, 0)
T(lahf0, "lahf", 0xffffffff, 0, 0, 0, DSI, DDI, 0, 0)
T(lahf1, "lahf", 0, 0, 0, 0, DSI, DDI, ALLF, 0)
T(lahf2, "lahf", 0, 0, 0, 0, DSI, DDI, ZF | CF, 0)
T(sahf0, "sahf", 0xff00, 0, 0, 0, DSI, DDI, 0, 0)
T(sahf1, "sahf", 0x0000, 0, 0, 0, DSI, DDI, ALLF, 0)
T(sahf2, "sahf", 0x2a00, 0, 0, 0, DSI, DDI, OF, 0)
T(sahf3, "sahf; lahf", 0xd500, 0, 0, 0, DSI, DDI, 0, 0)

/* ---------------- stack ---------------- */
T(pushpop, "pushl %eax; popl %ebx", 0x12345678, 0, 0, 0, DSI, DDI, 0, 0)
T(pushimm, "pushl $-5; popl %ecx; pushl $0x12345678; popl %edx; pushw $0x1234; popw %ax", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(pushmem, "pushl MEM+4; popl MEM+8; pushl (%ebp); popl 4(%ebp)", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(pushw, "pushw %ax; popw %bx; pushw %cx; popl %edx", 0x1111aaaa, 0x2222bbbb, 0x3333cccc, 0, DSI, DDI, 0, 0)
T(pushesp, "pushl %esp; popl %eax; pushw %sp; popw %bx", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(popesp, "pushl $STK-0x100; popl %esp; pushl $7", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(popmesp, "pushl $0x55; pushl $0x66; popl (%esp); popl %eax", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(pusha, "pushal; movl 12(%esp), %eax; movl %eax, MEM; notl 16(%esp); movl $0x777, 12(%esp); popal", 1, 2, 3, 4, 5, 6, 0, 0)
T(pushaw, "pushaw; movw 6(%esp), %ax; movw %ax, MEM; movw $0x99, 2(%esp); popaw", 0x11111111, 0x22222222, 0x33333333, 0x44444444, 0x55555555, 0x66666666, 0, 0)
T(enter0, "enter $16, $0; movl %esp, %eax; movl %ebp, %ebx; leave", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(enter1, "enter $8, $1; movl %esp, %eax; movl %ebp, %ebx; movl (%esp), %ecx; movl 8(%esp), %edx; movl 12(%esp), %esi", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(enter3, "enter $4, $3; movl 4(%esp), %eax; movl 8(%esp), %ebx; movl 12(%esp), %ecx; movl 16(%esp), %edx; movl %esp, %esi; movl %ebp, %edi; leave", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(enter5, "enter $0x104, $5; movl 4+0x104(%esp), %eax; movl 8+0x104(%esp), %ebx; movl 20+0x104(%esp), %ecx; movl %esp, %esi; movl %ebp, %edi; leave; movl %ebp, %edx", 0, 0, 0, 0, DSI, DDI, ALLF, 0)
T(leave, "movl %esp, %ebp; pushl $0x1234; pushl $0x5678; leave", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(callret, "pushl $1; pushl $2; call 1f; jmp 2f; 1: movl 4(%esp), %eax; addl 8(%esp), %eax; ret $8; 2:", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(callret2, "call 1f; addl $10, %eax; jmp 2f; 1: movl $5, %eax; ret; 2: movl %esp, %ebx", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(callnest, "call 1f; jmp 3f; 1: call 2f; incl %eax; ret; 2: incl %eax; ret; 3:", 0, 0, 0, 0, DSI, DDI, 0, 0)

/* ---------------- indirect control flow ---------------- */
T(jmpreg, "movl $1f, %edx; jmp *%edx; movl $5, %ebx; 1: movl $0, %edx; movl $7, %eax", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(jmpmem, "movl $1f, MEM+4; jmp *MEM+4; movl $5, %ebx; 1: movl $0, MEM+4; movl $8, %eax", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(callreg, "movl $1f, %edx; call *%edx; jmp 2f; 1: movl $0, %edx; movl $3, %eax; ret; 2:", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(callmem, "movl $1f, 8(%ebp); call *8(%ebp); jmp 2f; 1: movl $0, 8(%ebp); movl $4, %eax; ret $4; 2:", 0, 0, 0, 0, DSI, DDI, 0, 0)
#define JTAB "jmp *9f(,%ecx,4); .pushsection .rodata; .align 4; 9: .long 10f, 11f, 12f; .popsection; " \
    "10: movl $100, %eax; jmp 13f; 11: movl $101, %eax; jmp 13f; 12: movl $102, %eax; 13:"
T(jtab0, JTAB, 0, 0, 0, 0, DSI, DDI, 0, 0)
T(jtab1, JTAB, 0, 0, 1, 0, DSI, DDI, 0, 0)
T(jtab2, JTAB, 0, 0, 2, 0, DSI, DDI, 0, 0)
#define CTAB "call *9f(,%ecx,4); jmp 13f; .pushsection .rodata; .align 4; 9: .long 10f, 11f; .popsection; " \
    "10: addl $7, %eax; ret; 11: subl $7, %eax; ret; 13:"
T(ctab0, CTAB, 100, 0, 0, 0, DSI, DDI, 0, 0)
T(ctab1, CTAB, 100, 0, 1, 0, DSI, DDI, ALLF, 0)

/* ---------------- strings ---------------- */
STR(movsb, "cld; rep movsb", 0, 13, MEM, MEM + 0x40, 0)
STR(movsw_std, "std; rep movsw", 0, 5, MEM + 0x20, MEM + 0x60, 0)
STR(movsd, "cld; rep movsl", 0, 6, MEM + 4, MEM + 0x41, 0)
STR(movsd0, "cld; rep movsl", 0, 0, MEM, MEM + 0x40, ALLF)
STR(movsb1, "cld; movsb; movsw; movsl", 0, 7, MEM + 1, MEM + 0x51, 0)
STR(movs_ovl, "cld; rep movsb", 0, 16, MEM, MEM + 3, 0)
STR(stosb, "cld; rep stosb", 0x123456ab, 9, DSI, MEM + 0x3, 0)
STR(stosw_std, "std; rep stosw", 0x1234cdef, 4, DSI, MEM + 0x40, 0)
STR(stosd, "cld; rep stosl", 0xdeadbeef, 5, DSI, MEM + 0x10, ALLF)
STR(stosd0, "cld; rep stosl", 0xdeadbeef, 0, DSI, MEM + 0x10, 0)
STR(stosd_std, "std; stosl; stosl", 0xfeedface, 0, DSI, MEM + 0x30, 0)
STR(lodsb, "cld; lodsb; movl %eax, %ebx; lodsb", 0x11111111, 0, MEM + 0x20, DDI, 0)
STR(lodsw_std, "std; lodsw; movl %eax, %ebx; lodsw", 0x11111111, 0, MEM + 0x20, DDI, 0)
STR(lodsd, "cld; lodsl; movl %eax, %ebx; lodsl", 0x11111111, 0, MEM + 0x22, DDI, 0)
STR(rep_lodsb, "cld; rep lodsb", 0x11111111, 5, MEM + 0x20, DDI, 0)
STR(scasb_ne, "cld; repne scasb", 0x000000de, 32, DSI, MEM, 0)
STR(scasb_nf, "cld; repne scasb", 0x000000a5, 8, DSI, MEM, 0)
STR(scasd_e, "cld; repe scasl", 0x00000000, 8, DSI, MEM, ALLF)
STR(scasw_std, "std; repne scasw", 0x0000ff80, 10, DSI, MEM + 0x1e, 0)
STR(scasd1, "cld; scasl", 0x7fffffff, 0, DSI, MEM + 8, 0)
STR(scas0, "cld; repne scasb", 0, 0, DSI, MEM, ALLF)
STR(cmpsb_e, "movl MEM, %eax; movl %eax, MEM+0x40; movl MEM+4, %eax; movl %eax, MEM+0x44; cld; repe cmpsb", 0, 12, MEM, MEM + 0x40, 0)
STR(cmpsd_ne, "movl MEM+8, %eax; movl %eax, MEM+0x48; cld; repne cmpsl", 0, 16, MEM, MEM + 0x40, 0)
STR(cmpsw_std, "movl MEM+0x1c, %eax; movl %eax, MEM+0x5c; std; repe cmpsw", 0, 6, MEM + 0x1e, MEM + 0x5e, 0)
STR(cmpsb1, "cld; cmpsb; cmpsb", 0, 0, MEM + 4, MEM + 0x10, 0)
STR(cmps0, "cld; repe cmpsl", 0, 0, MEM, MEM + 0x40, ALLF)

/* ---------------- loops ---------------- */
T(loop, "movl $0, %eax; 1: incl %eax; loop 1b", 0, 0, 5, 0, DSI, DDI, 0, 0)
T(loop_big, "movl $0, %eax; 1: addl %ecx, %eax; loop 1b", 0, 0, 300, 0, DSI, DDI, 0, 0)
T(jecxz0, "movl $1, %eax; jecxz 1f; movl $2, %eax; 1:", 0, 0, 0, 0, DSI, DDI, 0, 0)
T(jecxz1, "movl $1, %eax; jecxz 1f; movl $2, %eax; 1:", 0, 0, 0x10000, 0, DSI, DDI, 0, 0)
T(jcxz0, "movl $1, %eax; jcxz 1f; movl $2, %eax; 1:", 0, 0, 0x10000, 0, DSI, DDI, 0, 0)
T(jcxz1, "movl $1, %eax; jcxz 1f; movl $2, %eax; 1:", 0, 0, 0x1, 0, DSI, DDI, 0, 0)
T(loope, "movl $MEM-4, %esi; 1: addl $4, %esi; cmpl $0, (%esi); loope 1b", 0, 0, 10, 0, DSI, DDI, 0, 0)
T(loope2, "movl $MEM+12, %esi; 1: addl $4, %esi; cmpl $0, (%esi); loope 1b", 0, 0, 3, 0, DSI, DDI, 0, 0)
T(loopne, "movl $MEM+4, %esi; 1: addl $4, %esi; cmpl $0xdeadbeef, (%esi); loopne 1b", 0, 0, 10, 0, DSI, DDI, 0, 0)
T(loopne2, "movl $MEM+4, %esi; 1: addl $4, %esi; cmpl $0x1, (%esi); loopne 1b", 0, 0, 2, 0, DSI, DDI, ALLF, 0)
T(loopw, "movl $0, %eax; 1: incl %eax; addr16 loop 1b", 0, 0, 0x50003, 0, DSI, DDI, 0, 0)

/* ---------------- misc ---------------- */
/* CPUID values differ between CPUs: just require it not to crash */
T(cpuid0, "cpuid; movl $0, %eax; movl $0, %ebx; movl $0, %ecx; movl $0, %edx", 0, 0, 0, 0, DSI, DDI, 0, 0)

/* ---------------- x87 (FNINIT first: cases must not depend on each other) ---------------- */
#define X87(n, code, fl) T(n, "fninit; " code, 0, 0, 0, 0, DSI, DDI, fl, 0)
X87(fadd, "fldl fk; faddl fk+8; fstpl MEM", 0)
X87(fsub, "fldl fk+8; fsubl fk+16; fstpl MEM; fldl fk; fsubrl fk+8; fstpl MEM+8", 0)
X87(fmul, "fldl fk+16; fmull fk+8; fstpl MEM", 0)
X87(fdiv, "fld1; fdivl fk+16; fstpl MEM; fnstsw %ax", 0)
/* no FNSTSW here: QEMU 7.2 does not set C1 on round-up (1/0.1 rounds up) */
X87(fdivr, "fldl fk+24; fdivrl fk+32; fstps MEM; fldl fk+40; fld1; fdivp; fstpl MEM+8", 0)
X87(fsqrt, "fldl fk+24; fsqrt; fstpl MEM; fldl fk+32; fsqrt; fstpl MEM+8", 0)
X87(fist_even, "fldl fk+48; fistl MEM; fldl fk+56; fistpl MEM+4; fistpl MEM+8", 0)
X87(fistp64, "fldl fk+32; fistpll MEM+8", 0)
X87(fild, "fildl MEM+4; fchs; fistpl MEM+8; fildl MEM+16; fiaddl MEM+20; fistpl MEM+24", 0)
X87(fconst, "fldpi; fstpl MEM; fldz; fld1; faddp; fstps MEM+8; fldl2e; fstpl MEM+12", 0)
X87(fxch, "fldl fk; fldl fk+16; fxch; fsubp %st, %st(1); fstpl MEM", 0)
X87(fcom_lt, "fldl fk; fcompl fk+8; fnstsw %ax", 0)
X87(fcom_gt, "fldl fk+8; fcompl fk; fnstsw %ax", ALLF)
X87(fcom_eq, "fldl fk+24; fcoml fk+24; fnstsw %ax; fstp %st(0)", 0)
/* FCOMI clears OF/SF/AF on hardware but QEMU 7.2 leaves them: with set
   input flags those are masked so the QEMU golden output stays clean */
#define X87U(n, code, fl, U) T(n, "fninit; " code, 0, 0, 0, 0, DSI, DDI, fl, U)
X87U(fcomi_lt, "fldl fk+8; fldl fk; fcomi %st(1), %st; fnstsw %ax", ALLF, OF | SF | AF)
X87(fcomi_lt0, "fldl fk+8; fldl fk; fcomi %st(1), %st; fnstsw %ax", 0)
X87(fcomi_gt, "fldl fk+16; fldl fk; fcomip %st(1), %st; fnstsw %ax", 0)
X87U(fcomi_eq, "fldl fk+24; fldl fk+24; fcomip %st(1), %st; fnstsw %ax", ALLF, OF | SF | AF)
X87(fucomi, "fldl fk+40; fldl fk+32; fucomip %st(1), %st; setb %bl; seta %bh", 0)
X87(fstsw_stack, "fld1; fld1; fld1; fnstsw %ax; faddp; movl %eax, %ebx; fnstsw %ax", 0)
X87(fmix, "fildl MEM+16; fmull fk+40; fldl fk+8; fdivrp; fsqrt; fistpl MEM; fnstsw %ax", 0)
X87(fabs, "fldl fk+16; fabs; fldl fk+56; fchs; fmulp; fstpl MEM", 0)

/* ---------------- MMX (EMMS so later x87 code sees an empty stack) ---------------- */
#define MMXT(n, code) T(n, code "; emms", 0, 0, 0, 0, DSI, DDI, 0, 0)
MMXT(paddb, "movq MEM+16, %mm0; movq MEM+24, %mm1; paddb %mm1, %mm0; movq %mm0, MEM; movd %mm0, %eax")
MMXT(pmullw, "movq MEM+32, %mm2; pmullw MEM+40, %mm2; movq %mm2, MEM+8; psrlq $32, %mm2; movd %mm2, %ebx")
MMXT(pxor_mmx, "movq MEM+48, %mm3; pxor MEM+56, %mm3; paddw %mm3, %mm3; movq %mm3, MEM+64")

#ifdef WITH_SSE
/* ---------------- SSE/SSE2: needs CR4.OSFXSR, only in insn-sse ---------------- */
#define SSET(n, code) T(n, code, 0, 0, 0, 0, DSI, DDI, 0, 0)
SSET(addps, "movups fks, %xmm0; movups fks+16, %xmm1; addps %xmm1, %xmm0; movups %xmm0, MEM")
SSET(mulsd, "movsd fk+8, %xmm2; mulsd fk+16, %xmm2; movsd %xmm2, MEM+8; movsd fk+40, %xmm3; mulsd fk+40, %xmm3; movsd %xmm3, MEM+16")
SSET(cvtsi2sd, "movl $-7, %eax; cvtsi2sd %eax, %xmm0; movsd %xmm0, MEM; cvtsi2sdl MEM+12, %xmm1; movsd %xmm1, MEM+8")
SSET(cvttsd2si, "cvttsd2si fk+56, %eax; cvttsd2si fk+32, %ebx; cvttsd2si fk+48, %ecx")
SSET(pxor, "movdqu MEM+4, %xmm4; movdqu MEM+36, %xmm5; pxor %xmm5, %xmm4; movdqu %xmm4, MEM+65")
SSET(pshufd, "movdqu MEM+16, %xmm6; pshufd $0x1b, %xmm6, %xmm7; movdqu %xmm7, MEM+48; pshufd $0x55, MEM+32, %xmm0; movd %xmm0, %eax")
SSET(movdqu, "movdqu MEM+3, %xmm1; movdqu %xmm1, MEM+97; movd %xmm1, %edx")
#endif
