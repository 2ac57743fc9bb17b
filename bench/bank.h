/*
** bench/bank.h — the bank benchmark's accounts, written once against
** bench/tm.h.
**
** n accounts, each one word holding a balance.  Transfers move money between
** two accounts; a balance check reads every account in one transaction and
** must see the total that the bank started with (money is conserved, and a
** transaction sees a consistent snapshot).  Balances are unsigned words with
** wrap-around arithmetic, so "negative" balances are fine and the total is
** conserved modulo 2^64.  Include bench/tm.h's variant selection first.
**
** Transactional operations (any thread that did TM_THREAD_ENTER):
**     void      bank_transfer(tm_tx_t *tx, bank_t *b, uintptr_t from,
**                             uintptr_t to, uintptr_t amount)
**     uintptr_t bank_balance(tm_tx_t *tx, bank_t *b, uintptr_t i)
**     uintptr_t bank_total(tm_tx_t *tx, bank_t *b)   sum of all accounts
**   Each runs one transaction; the *_in forms run inside the caller's.
**
** Non-transactional (only while no transaction runs on the bank):
**     int       bank_init(bank_t *b, uintptr_t n, uintptr_t initial)
**                 0, or -1 if memory ran out
**     void      bank_destroy(bank_t *b)
**     uintptr_t bank_expected(const bank_t *b)        n * initial
**     uintptr_t bank_sum(const bank_t *b)             plain sum
**     int       bank_check(const bank_t *b)           0 if sum == expected
*/
#ifndef AME_BENCH_BANK_H
#define AME_BENCH_BANK_H

#include "tm.h"

typedef struct bank {
  uintptr_t n;         /* number of accounts; constant */
  uintptr_t initial;   /* each account's opening balance; constant */
  uintptr_t *accounts; /* n balances, one word each */
} bank_t;

static inline int bank_init(bank_t *b, uintptr_t n, uintptr_t initial) {
  b->n = n;
  b->initial = initial;
  b->accounts = malloc((n ? n : 1) * sizeof *b->accounts);
  if (b->accounts == NULL)
    return -1;
  for (uintptr_t i = 0; i < n; i++)
    b->accounts[i] = initial;
  return 0;
}

static inline void bank_destroy(bank_t *b) {
  free(b->accounts);
  b->accounts = NULL;
}

static inline TM_SAFE void bank_transfer_in(tm_tx_t *tx, bank_t *b,
                                            uintptr_t from, uintptr_t to,
                                            uintptr_t amount) {
  uintptr_t f = TM_LOAD_WORD(tx, &b->accounts[from]);
  TM_STORE_WORD(tx, &b->accounts[from], f - amount);
  uintptr_t t = TM_LOAD_WORD(tx, &b->accounts[to]);
  TM_STORE_WORD(tx, &b->accounts[to], t + amount);
}

static inline TM_SAFE uintptr_t bank_balance_in(tm_tx_t *tx, bank_t *b,
                                                uintptr_t i) {
  return TM_LOAD_WORD(tx, &b->accounts[i]);
}

static inline TM_SAFE uintptr_t bank_total_in(tm_tx_t *tx, bank_t *b) {
  uintptr_t sum = 0;
  for (uintptr_t i = 0; i < b->n; i++)
    sum += TM_LOAD_WORD(tx, &b->accounts[i]);
  return sum;
}

static inline void bank_transfer(tm_tx_t *tx, bank_t *b, uintptr_t from,
                                 uintptr_t to, uintptr_t amount) {
  TM_ATOMIC(tx) { bank_transfer_in(tx, b, from, to, amount); }
}

static inline uintptr_t bank_balance(tm_tx_t *tx, bank_t *b, uintptr_t i) {
  TM_VOLATILE uintptr_t r = 0;
  TM_ATOMIC(tx) { r = bank_balance_in(tx, b, i); }
  return r;
}

static inline uintptr_t bank_total(tm_tx_t *tx, bank_t *b) {
  TM_VOLATILE uintptr_t r = 0;
  TM_ATOMIC(tx) { r = bank_total_in(tx, b); }
  return r;
}

static inline uintptr_t bank_expected(const bank_t *b) {
  return b->n * b->initial;
}

static inline uintptr_t bank_sum(const bank_t *b) {
  uintptr_t sum = 0;
  for (uintptr_t i = 0; i < b->n; i++)
    sum += b->accounts[i];
  return sum;
}

static inline int bank_check(const bank_t *b) {
  return bank_sum(b) == bank_expected(b) ? 0 : -1;
}

#endif /* AME_BENCH_BANK_H */
