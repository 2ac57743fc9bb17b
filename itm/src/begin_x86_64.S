/*
** itm/src/begin_x86_64.S — _ITM_beginTransaction, the returns-twice entry
** of GCC's transactional memory ABI, and the jump back to its checkpoint.
**
** _ITM_beginTransaction(uint32_t properties, ...) saves the caller's view
** of the callee-saved registers (rbx, rbp, r12-r15), its stack pointer as
** it will be after the return, and the return address into a checkpoint on
** its own frame, and passes it to ame_itm__begin (itm.c), which keeps a copy
** for the outermost transaction and returns the _ITM_actions to take.  An
** abort later resumes from that copy with ame_itm__restore: the registers
** and stack pointer come back, and control returns to the caller of
** _ITM_beginTransaction a second time, with new actions in eax.
**
** The checkpoint's layout is struct ame_itm_checkpoint (itm.h).
*/
#if defined(__x86_64__)

#ifdef __CET__
#define ENTRY_BRANCH endbr64
#else
#define ENTRY_BRANCH
#endif

	.text

	.globl	_ITM_beginTransaction
	.type	_ITM_beginTransaction, @function
	.p2align 4
_ITM_beginTransaction:
	.cfi_startproc
	ENTRY_BRANCH
	/* rsp is 8 mod 16 here; 72 bytes keep the call below aligned. */
	leaq	8(%rsp), %rax		/* the caller's rsp after our return */
	subq	$72, %rsp
	.cfi_adjust_cfa_offset 72
	movq	%rax, 0(%rsp)
	movq	%rbx, 8(%rsp)
	movq	%rbp, 16(%rsp)
	movq	%r12, 24(%rsp)
	movq	%r13, 32(%rsp)
	movq	%r14, 40(%rsp)
	movq	%r15, 48(%rsp)
	movq	72(%rsp), %rax		/* the return address */
	movq	%rax, 56(%rsp)
	movq	%rsp, %rsi		/* edi: the properties, as passed */
	call	ame_itm__begin
	addq	$72, %rsp
	.cfi_adjust_cfa_offset -72
	ret
	.cfi_endproc
	.size	_ITM_beginTransaction, .-_ITM_beginTransaction

/* void ame_itm__restore(const struct ame_itm_checkpoint *cp, uint32_t a)
** Never returns: _ITM_beginTransaction returns a to its caller again. */
	.globl	ame_itm__restore
	.hidden	ame_itm__restore
	.type	ame_itm__restore, @function
	.p2align 4
ame_itm__restore:
	.cfi_startproc
	ENTRY_BRANCH
	movq	8(%rdi), %rbx
	movq	16(%rdi), %rbp
	movq	24(%rdi), %r12
	movq	32(%rdi), %r13
	movq	40(%rdi), %r14
	movq	48(%rdi), %r15
	movl	%esi, %eax
	movq	56(%rdi), %rdx
	movq	0(%rdi), %rsp
	jmp	*%rdx
	.cfi_endproc
	.size	ame_itm__restore, .-ame_itm__restore

#else
#error "libame-itm: _ITM_beginTransaction is written for x86-64 only"
#endif

	.section .note.GNU-stack,"",@progbits
