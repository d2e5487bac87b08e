/*
 * milter-fixed: the ceiling of bench/milter-wire.ts. A minimal milter on Sendmail's libmilter
 * (Debian libmilter-dev) that decides nothing: CONTINUE to every recipient, DATA and end of
 * message. It must never do more work than overquota's milter does for the same packets.
 *
 *   cc -O2 -o milter-fixed bench/milter-fixed.c -lmilter -lpthread
 *   ./milter-fixed inet:PORT@127.0.0.1
 *
 * It negotiates what src/faces/milter/session.ts negotiates, so the load client sends both the same
 * packets: no HELO, header, end-of-header, body or unknown steps; CONNECT and MAIL seen but not
 * answered (v6 NR_*); the v6 macro lists "i" for MAIL and "i {rcpt_mailer}" for RCPT. libmilter
 * runs one thread per connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libmilter/mfapi.h>

#define SKIP (SMFIP_NOHELO | SMFIP_NOHDRS | SMFIP_NOEOH | SMFIP_NOBODY | SMFIP_NOUNKNOWN)
#define NO_REPLY (SMFIP_NR_CONN | SMFIP_NR_MAIL | SMFIP_NR_HELO | SMFIP_NR_HDR | SMFIP_NR_EOH | SMFIP_NR_BODY | SMFIP_NR_UNKN)

static sfsistat on_negotiate(SMFICTX *ctx, unsigned long actions, unsigned long protocol, unsigned long f2, unsigned long f3,
                             unsigned long *want_actions, unsigned long *want_protocol, unsigned long *want_f2, unsigned long *want_f3)
{
	(void)f2;
	(void)f3;
	*want_actions = actions & SMFIF_SETSYMLIST;
	*want_protocol = (SKIP | NO_REPLY) & protocol;
	*want_f2 = 0;
	*want_f3 = 0;
	if (*want_actions & SMFIF_SETSYMLIST) {
		smfi_setsymlist(ctx, SMFIM_ENVFROM, "i");
		smfi_setsymlist(ctx, SMFIM_ENVRCPT, "i {rcpt_mailer}");
	}
	return SMFIS_CONTINUE;
}

/* Not answered (NR_CONN, NR_MAIL negotiated): seen only, as overquota's session sees them. */
static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr)
{
	(void)ctx;
	(void)host;
	(void)addr;
	return SMFIS_NOREPLY;
}

static sfsistat on_mail(SMFICTX *ctx, char **argv)
{
	(void)ctx;
	(void)argv;
	return SMFIS_NOREPLY;
}

static sfsistat on_continue(SMFICTX *ctx, char **argv)
{
	(void)ctx;
	(void)argv;
	return SMFIS_CONTINUE;
}

static sfsistat on_data_or_eom(SMFICTX *ctx)
{
	(void)ctx;
	return SMFIS_CONTINUE;
}

int main(int argc, char **argv)
{
	struct smfiDesc desc;

	if (argc != 2) {
		fprintf(stderr, "usage: %s inet:PORT@127.0.0.1\n", argv[0]);
		return 2;
	}
	memset(&desc, 0, sizeof desc);
	desc.xxfi_name = "milter-fixed";
	desc.xxfi_version = SMFI_VERSION;
	desc.xxfi_flags = 0;
	desc.xxfi_connect = on_connect;
	desc.xxfi_envfrom = on_mail;
	desc.xxfi_envrcpt = on_continue;
	desc.xxfi_data = on_data_or_eom;
	desc.xxfi_eom = on_data_or_eom;
	desc.xxfi_negotiate = on_negotiate;
	if (smfi_setconn(argv[1]) != MI_SUCCESS || smfi_register(desc) != MI_SUCCESS) {
		fprintf(stderr, "milter-fixed: cannot use %s\n", argv[1]);
		return 1;
	}
	/* 50 load connections connect at once: libmilter's default backlog is enough, say it anyway. */
	smfi_setbacklog(128);
	printf("ready\n");
	fflush(stdout);
	return smfi_main() == MI_SUCCESS ? 0 : 1;
}
