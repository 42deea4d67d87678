# Shared by the launch scripts (sourced, not run).

# checkout_config SPEC: the workers get this checkout, so a config file (SPEC is PATH[:ARG]) must be inside it.
# Sets CONFIG to SPEC with PATH made relative to $ROOT, and config_file to that relative path; dies otherwise.
checkout_config() {
  CONFIG=$1
  config_file=${CONFIG%%:*}
  if [[ -f "$config_file" ]]; then
    local abs rel
    abs="$(cd "$(dirname "$config_file")" && pwd)/$(basename "$config_file")"
    rel=${abs#"$ROOT"/}
    [[ "$rel" != "$abs" ]] || die "$config_file is outside $ROOT: the workers only get this checkout"
    CONFIG=$rel${CONFIG#"$config_file"}
    config_file=$rel
  fi
  [[ -f "$ROOT/$config_file" ]] || die "no config file $ROOT/$config_file"
}
