#!/usr/bin/env bash
# The self-containment check run by ctest (launch.no_outside_paths): a clone holds only the
# repository, so no file in it may point outside it. Every tracked text file (and every untracked
# one git does not ignore, so a new file is checked before its commit) is read, and each line that
# names one of these is reported as file:line:
#   - the folders that sit beside a checkout on the machines it was written on, not in a clone:
#     the shared notes folder and the .library folder one level up, or an absolute path under the
#     /work root;
#   - a relative path whose leading `../` steps climb above the repository root from the file's own
#     folder (`../x` from a file at the root, `../../x` from docs/, ...).
# Binary files are skipped, and so is this script, which has to spell the patterns out.
#   bash launch/check_paths.sh        exit 0: none found; 1: found (listed); 2: cannot run
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
command -v git >/dev/null || { echo "check_paths: git not found"; exit 2; }
command -v perl >/dev/null || { echo "check_paths: perl not found"; exit 2; }
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "check_paths: $ROOT is not a git checkout"; exit 2; }

git ls-files -z --cached --others --exclude-standard | perl -0 -e '
  use strict;
  use warnings;
  my $self = "launch/check_paths.sh";
  my ($files, @found) = (0);
  my %seen;
  while (my $f = <STDIN>) {
    chomp $f;
    next if $f eq $self || $seen{$f}++ || -l $f || !-f $f;
    open(my $fh, "<:raw", $f) or die "check_paths: cannot read $f: $!\n";
    my $text = do { local $/; <$fh> };
    close $fh;
    next if index($text, "\0") >= 0;  # binary (an image, an HDF5 file)
    $files++;
    my $depth = () = $f =~ m{/}g;  # folders between the root and the file
    my $n = 0;
    for my $line (split /\n/, $text) {
      $n++;
      my @why;
      push @why, "../shared" if $line =~ m{\.\./shared(?![\w.-])};
      push @why, "../.library" if $line =~ m{\.\./\.library(?![\w-])};
      push @why, "/work/..." if $line =~ m#(?<![\w.~\$}/-])/wor[k]/#;
      # Relative paths: a run of ../ at the start of a word (not after a folder, a variable or a
      # command substitution, whose own place is unknown). Ranges (a..b) and ellipses (...) have
      # no slash after the two dots, or a dot or word before them, and do not count.
      while ($line =~ m#(?<![\w.\$})/~-])((?:\.\./)+)#g) {
        my $run = $1;
        my $up = () = $run =~ m{\.\./}g;
        if ($up > $depth) {
          push @why, "$run climbs $up folder(s) from a file $depth deep";
          last;
        }
      }
      push @found, "$f:$n: " . join("; ", @why) . ": " . substr($line =~ s/^\s+//r, 0, 160)
        if @why;
    }
  }
  if (@found) {
    print "check_paths: ", scalar(@found), " line(s) refer to a path outside the repository ",
          "(write about docs/model.md, docs/scan.md or the seed post by its title instead):\n";
    print "  $_\n" for @found;
    exit 1;
  }
  print "check_paths: $files files refer to no path outside the repository\n";
'
