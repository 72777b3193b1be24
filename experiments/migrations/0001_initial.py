# Experiments move from lanes into their own app: the tables stay where they are (state only).

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('accounts', '0001_initial'),
        ('lanes', '0005_moved_out'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='Experiment',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.SlugField(max_length=100, unique=True)),
                        ('prompts', models.JSONField(help_text='[{prompt, expected_text}]')),
                        ('seeds', models.JSONField(help_text='The seeds every arm renders each prompt with.')),
                        ('state', models.CharField(choices=[('running', 'Running'), ('paused', 'Paused'), ('cancelled', 'Cancelled'), ('finished', 'Finished')], default='running', max_length=10)),
                        ('stopped_reason', models.CharField(blank=True, help_text='Why it stopped before finishing.', max_length=300)),
                        ('definition', models.TextField(blank=True, help_text='The YAML it was created from.')),
                        ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('created_by', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='experiments', to=settings.AUTH_USER_MODEL)),
                        ('team', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='experiments', to='accounts.team')),
                    ],
                    options={
                        'ordering': ['-created_at', '-id'],
                        'db_table': 'lanes_experiment',
                    },
                ),
                migrations.CreateModel(
                    name='Arm',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('name', models.SlugField()),
                        ('position', models.PositiveSmallIntegerField(default=0)),
                        ('steps', models.PositiveSmallIntegerField(blank=True, null=True)),
                        ('guidance', models.FloatField(blank=True, null=True)),
                        ('width', models.PositiveIntegerField(blank=True, null=True)),
                        ('height', models.PositiveIntegerField(blank=True, null=True)),
                        ('lane', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='lanes.lane')),
                        ('model_version', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='lanes.modelversion')),
                        ('experiment', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='arms', to='experiments.experiment')),
                    ],
                    options={
                        'ordering': ['experiment', 'position'],
                        'db_table': 'lanes_arm',
                        'constraints': [models.UniqueConstraint(fields=('experiment', 'name'), name='arm_name_unique_in_experiment')],
                    },
                ),
                migrations.CreateModel(
                    name='ExperimentCell',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('prompt_index', models.PositiveIntegerField()),
                        ('sample_index', models.PositiveIntegerField()),
                        ('seed', models.BigIntegerField()),
                        ('arm', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='cells', to='experiments.arm')),
                        ('experiment', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='cells', to='experiments.experiment')),
                        ('job', models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='experiment_cell', to='lanes.job')),
                    ],
                    options={
                        'ordering': ['prompt_index', 'sample_index', 'arm__position'],
                        'db_table': 'lanes_experimentcell',
                        'constraints': [models.UniqueConstraint(fields=('arm', 'prompt_index', 'sample_index'), name='one_cell_per_arm_prompt_seed')],
                    },
                ),            ],
        ),
    ]
