# Teams and members now live in accounts, experiments in experiments: lanes forgets them
# (state only: the tables keep their names and rows), and content types follow the models.

import django.db.models.deletion
from django.db import migrations, models

MOVED = {"team": "accounts", "member": "accounts", "experiment": "experiments", "arm": "experiments",
         "experimentcell": "experiments"}


def move_content_types(apps, schema_editor):
    """The old content type (which permissions and admin log entries point at) takes the new label.

    A content type under the new label can exist already, made by post_migrate when only part
    of the migrations ran (`migrate accounts`): nothing points at that fresh one yet but its
    own default permissions, and it goes.
    """
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model, app_label in MOVED.items():
        old = ContentType.objects.filter(app_label="lanes", model=model)
        if old.exists():
            ContentType.objects.filter(app_label=app_label, model=model).delete()
            old.update(app_label=app_label)


def restore_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model, app_label in MOVED.items():
        if not ContentType.objects.filter(app_label="lanes", model=model).exists():
            ContentType.objects.filter(app_label=app_label, model=model).update(app_label="lanes")


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0001_initial'),
        ('admin', '0003_logentry_add_action_flag_choices'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('lanes', '0004_job_deferral_and_routing'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.AlterField(
                    model_name='job',
                    name='team',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='jobs', to='accounts.team'),
                ),
                migrations.DeleteModel(name='ExperimentCell'),
                migrations.DeleteModel(name='Arm'),
                migrations.DeleteModel(name='Experiment'),
                migrations.DeleteModel(name='Member'),
                migrations.DeleteModel(name='Team'),
            ],
        ),
        migrations.RunPython(move_content_types, restore_content_types),
    ]
