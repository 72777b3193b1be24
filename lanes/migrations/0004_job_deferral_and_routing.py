# Deferral becomes fields (it was a phrase in admission_reason), and a job says whether the
# routing policy sent it (experiment jobs are pinned to their arm's lane and version).
# A reason cut at 300 characters before its "released after" lost that figure: such a job
# keeps deferred_at and no released_at.

import re
from datetime import timedelta

from django.db import migrations, models

RELEASED = re.compile(r"released after ([0-9.]+) s")


def backfill(apps, schema_editor):
    Job = apps.get_model("lanes", "Job")
    ExperimentCell = apps.get_model("lanes", "ExperimentCell")
    Job.objects.filter(pk__in=ExperimentCell.objects.filter(job__isnull=False).values("job_id")).update(routed=False)
    held = Job.objects.filter(models.Q(admission="deferred") | models.Q(admission_reason__contains="released after"))
    for job in held.only("pk", "submitted_at", "admission_reason").iterator():
        match = RELEASED.search(job.admission_reason)
        released = job.submitted_at + timedelta(seconds=float(match.group(1))) if match else None
        reason = RELEASED.sub("", job.admission_reason).rstrip("; ")
        Job.objects.filter(pk=job.pk).update(deferred_at=job.submitted_at, released_at=released, admission_reason=reason)


class Migration(migrations.Migration):

    dependencies = [
        ('lanes', '0003_experiments'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='deferred_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='job',
            name='released_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='job',
            name='routed',
            # A database default too: processes of the previous release, still running while this is
            # applied, insert jobs without the column.
            field=models.BooleanField(db_default=True, default=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
