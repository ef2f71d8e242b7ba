/*
 * cli.h — the `booth` command's subcommands (one file each, like git's builtin/).
 *
 * Each subcommand is `int cmd_NAME(int argc, char **argv)` with argv[0] the
 * subcommand name; it returns the process exit status (0 ok, 1 failure, 2 usage).
 */
#ifndef BOOTH_CLI_CLI_H
#define BOOTH_CLI_CLI_H

int cmd_info(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_grid(int argc, char **argv);
int cmd_lora_grad(int argc, char **argv);
int cmd_init_model(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_priors(int argc, char **argv);

#endif
