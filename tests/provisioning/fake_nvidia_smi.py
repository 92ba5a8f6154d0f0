"""A stand-in for nvidia-smi that answers ``--query-gpu=F1,F2,... --format=csv`` from a
recorded capture of the same query with more fields (tests/fixtures/gpu/nvidia-smi-csv).

    fake_nvidia_smi.py CAPTURE [--no-field NAME] [--xml RECORDING] -- <nvidia-smi's arguments>

It prints the columns asked for, in the order asked, header and values exactly as the real tool
printed them; a field the capture lacks, or one named by --no-field (a driver that predates it),
is refused as nvidia-smi refuses it: 'Field "F" is not a valid field to query.', exit status 2.
``-q -x`` prints RECORDING (a recorded ``nvidia-smi -q -x``). Any other command line is one
that was not recorded: exit status 3.
"""

import csv
import sys


def main(argv: list[str]) -> int:
    capture, rest = argv[0], argv[1:]
    unknown, xml = set(), None
    while rest and rest[0] in ("--no-field", "--xml"):
        if rest[0] == "--xml":
            xml = rest[1]
        else:
            unknown.add(rest[1])
        rest = rest[2:]
    args = rest[1:] if rest[:1] == ["--"] else rest
    if args == ["-q", "-x"] and xml:
        with open(xml) as recorded:
            sys.stdout.write(recorded.read())
        return 0
    queries = [a.removeprefix("--query-gpu=") for a in args if a.startswith("--query-gpu=")]
    if len(args) != 2 or len(queries) != 1 or "--format=csv" not in args:
        print(f"fake nvidia-smi: {args!r} was not recorded", file=sys.stderr)
        return 3
    with open(capture) as recorded:
        rows = list(csv.reader(recorded, skipinitialspace=True))
    names = [column.split(" [")[0] for column in rows[0]]
    columns = []
    for field in queries[0].split(","):
        if field in unknown or field not in names:
            print(f'Field "{field}" is not a valid field to query.\n')
            return 2
        columns.append(names.index(field))
    for row in rows:
        print(", ".join(row[i] for i in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
