# shellcheck shell=bash
# The bash completion program of the megafs tools. Edit this file, not
# contrib/megafs-completion.bash: "python -m tools.manpages --all" writes that one
# from the tools' argparse parsers (the tables _megafs_opts, _megafs_pos and
# _megafs_subs) followed by everything below this header.
# shellcheck disable=SC2154  # the tables are declared in the generated file

# Completes the word before the cursor from the tables above. Words are split at
# blanks only (not at ':' or '='), so storage URLs and --opt=value work.
_megafs_complete() {
    local line=${COMP_LINE:0:COMP_POINT} IFS=$' \t\n'
    local -a words
    read -r -a words <<<"$line"
    [[ -z $line || $line =~ [[:space:]]$ ]] && words+=("")
    local cur=${words[${#words[@]}-1]} node=${words[0]##*/} pos=0 i w kind=
    for ((i = 1; i < ${#words[@]} - 1; i++)); do
        w=${words[i]}
        if [[ $w == -* ]]; then
            kind=$(_megafs_optkind "$node" "${w%%=*}")
            [[ $w != *=* && -n $kind && $kind != =* ]] && ((i++))
        else
            local -a p
            read -r -a p <<<"${_megafs_pos[$node]}"
            if [[ ${p[pos]} == sub ]]; then node+=/$w; pos=0; else ((pos++)); fi
        fi
    done
    COMPREPLY=()
    local prev=${words[${#words[@]}-2]}
    if ((${#words[@]} > 2)) && [[ $prev == -* && $prev != *=* ]] &&
        kind=$(_megafs_optkind "$node" "$prev") && [[ -n $kind && $kind != =* ]]; then
        _megafs_values "$kind" "$cur" ""
    elif [[ $cur == -*=* ]]; then
        kind=$(_megafs_optkind "$node" "${cur%%=*}")
        [[ -n $kind ]] && _megafs_values "${kind#=}" "${cur#*=}" "${cur%%=*}="
    elif [[ $cur == -* ]]; then
        local o opts=()
        for o in ${_megafs_opts[$node]}; do opts+=("${o%%:*}"); done
        mapfile -t COMPREPLY < <(compgen -W "${opts[*]}" -- "$cur")
    else
        local -a p
        read -r -a p <<<"${_megafs_pos[$node]}"
        kind=${p[pos]}
        if [[ $kind == sub ]]; then
            mapfile -t COMPREPLY < <(compgen -W "${_megafs_subs[$node]}" -- "$cur")
        elif [[ -n $kind ]]; then
            _megafs_values "$kind" "$cur" ""
        fi
    fi
    # bash replaces only the text after the last word-break character (':' '=').
    local breaks=
    [[ $COMP_WORDBREAKS == *:* ]] && breaks+=:
    [[ $COMP_WORDBREAKS == *=* ]] && breaks+='='
    if [[ -n $breaks && $cur == *["$breaks"]* ]]; then
        local head=${cur%"${cur##*["$breaks"]}"}
        COMPREPLY=("${COMPREPLY[@]#"$head"}")
    fi
    return 0
}

# The completion kind of option $2 of command node $1 ("" for a flag).
_megafs_optkind() {
    local o
    for o in ${_megafs_opts[$1]}; do
        if [[ ${o%%:*} == "$2" ]]; then
            printf '%s' "${o#*:}"
            return 0
        fi
    done
    return 1
}

# COMPREPLY for a value of kind $1, typed so far as $2, to be prefixed with $3.
_megafs_values() {
    local kind=$1 cur=$2 prefix=$3 IFS=$'\n' m
    case $kind in
    file) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); compopt -o filenames 2>/dev/null ;;
    dir) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); compopt -o filenames 2>/dev/null ;;
    mount)
        while IFS=' ' read -r _ m kind _; do
            m=$(printf '%b' "$m")  # /proc/mounts writes a blank as \040
            [[ $kind == fuse.megafs && $m == "$cur"* ]] && COMPREPLY+=("$m")
        done </proc/self/mounts ;;
    url)
        if [[ $cur == local://* ]]; then
            mapfile -t COMPREPLY < <(compgen -d -P local:// -S / -- "${cur#local://}")
        else
            mapfile -t COMPREPLY < <(compgen -W $'local:///\ns3://\ns3+http://' -- "$cur")
        fi
        compopt -o nospace 2>/dev/null ;;
    words:*) mapfile -t COMPREPLY < <(IFS='|'; compgen -W "${kind#words:}" -- "$cur") ;;
    list:*)
        local done=
        [[ $cur == *,* ]] && done=${cur%,*},
        mapfile -t COMPREPLY < <(IFS='|'; compgen -P "$done" -W "${kind#list:}" -- "${cur##*,}")
        compopt -o nospace 2>/dev/null ;;
    esac
    if [[ -n $prefix ]]; then
        COMPREPLY=("${COMPREPLY[@]/#/$prefix}")
    fi
}
