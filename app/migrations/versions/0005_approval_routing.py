"""approval routing: levels, group leads and aliases, out-of-office, task comments, audit context

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:14:52.797666
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('out_of_office',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('substitute_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['substitute_id'], ['users.id'], name=op.f('fk_out_of_office_substitute_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_out_of_office_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_out_of_office'))
    )
    with op.batch_alter_table('out_of_office', schema=None) as batch_op:
        batch_op.create_index('ix_out_of_office_user_period', ['user_id', 'starts_at', 'ends_at'], unique=False)

    op.create_table('group_aliases',
    sa.Column('name', sa.String(length=120), nullable=False),
    sa.Column('group_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_group_aliases_group_id_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_group_aliases'))
    )
    with op.batch_alter_table('group_aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_group_aliases_group_id'), ['group_id'], unique=False)

    op.create_table('approval_levels',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('instance_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('group_name', sa.String(length=120), nullable=False),
    sa.Column('quorum', sa.String(length=20), nullable=False),
    sa.Column('on_decline', sa.String(length=20), nullable=False),
    sa.Column('required', sa.Integer(), nullable=True),
    sa.Column('seats', sa.Integer(), nullable=True),
    sa.Column('eligible', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('approvals', sa.Integer(), nullable=False),
    sa.Column('declines', sa.Integer(), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['workflow_instances.id'], name=op.f('fk_approval_levels_instance_id_workflow_instances')),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_approval_levels_milestone_id_milestones')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_approval_levels')),
    sa.UniqueConstraint('instance_id', 'level', name='uq_approval_levels_instance_level')
    )
    with op.batch_alter_table('approval_levels', schema=None) as batch_op:
        batch_op.create_index('ix_approval_levels_group_status', ['group_name', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_approval_levels_milestone_id'), ['milestone_id'], unique=False)

    op.create_table('task_comments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task_id', sa.String(length=36), nullable=False),
    sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('author_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['author_id'], ['users.id'], name=op.f('fk_task_comments_author_id_users')),
    sa.ForeignKeyConstraint(['milestone_id'], ['milestones.id'], name=op.f('fk_task_comments_milestone_id_milestones')),
    sa.ForeignKeyConstraint(['task_id'], ['human_tasks.id'], name=op.f('fk_task_comments_task_id_human_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_comments'))
    )
    with op.batch_alter_table('task_comments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_comments_milestone_id'), ['milestone_id'], unique=False)
        batch_op.create_index('ix_task_comments_task', ['task_id', 'id'], unique=False)

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('milestone_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('task_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('round', sa.Integer(), nullable=True))
        batch_op.create_index('ix_audit_events_milestone', ['milestone_id', 'id'], unique=False)

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lead_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_groups_lead_id_users'), 'users', ['lead_id'], ['id'], ondelete='SET NULL')

    with op.batch_alter_table('human_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('level', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('seat', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('group_name', sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column('delegated_by_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('substitute_for_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('on_behalf_of_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.create_index(batch_op.f('ix_human_tasks_delegated_by_id'), ['delegated_by_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_human_tasks_substitute_for_id_users'), 'users', ['substitute_for_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_human_tasks_on_behalf_of_id_users'), 'users', ['on_behalf_of_id'], ['id'])
        batch_op.create_foreign_key(batch_op.f('fk_human_tasks_delegated_by_id_users'), 'users', ['delegated_by_id'], ['id'])

    with op.batch_alter_table('milestones', schema=None) as batch_op:
        # existing milestones have no custom fields
        batch_op.add_column(sa.Column('attributes', sa.JSON(), nullable=False, server_default=sa.text("'{}'")))

    with op.batch_alter_table('task_candidates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('substitute_for', sa.String(length=80), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('task_candidates', schema=None) as batch_op:
        batch_op.drop_column('substitute_for')

    with op.batch_alter_table('milestones', schema=None) as batch_op:
        batch_op.drop_column('attributes')

    with op.batch_alter_table('human_tasks', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_human_tasks_delegated_by_id_users'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_human_tasks_on_behalf_of_id_users'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('fk_human_tasks_substitute_for_id_users'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_human_tasks_delegated_by_id'))
        batch_op.drop_column('on_behalf_of_id')
        batch_op.drop_column('substitute_for_id')
        batch_op.drop_column('delegated_by_id')
        batch_op.drop_column('group_name')
        batch_op.drop_column('seat')
        batch_op.drop_column('level')

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_groups_lead_id_users'), type_='foreignkey')
        batch_op.drop_column('lead_id')

    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_milestone')
        batch_op.drop_column('round')
        batch_op.drop_column('task_id')
        batch_op.drop_column('milestone_id')

    with op.batch_alter_table('task_comments', schema=None) as batch_op:
        batch_op.drop_index('ix_task_comments_task')
        batch_op.drop_index(batch_op.f('ix_task_comments_milestone_id'))

    op.drop_table('task_comments')
    with op.batch_alter_table('approval_levels', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_levels_milestone_id'))
        batch_op.drop_index('ix_approval_levels_group_status')

    op.drop_table('approval_levels')
    with op.batch_alter_table('group_aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_group_aliases_group_id'))

    op.drop_table('group_aliases')
    with op.batch_alter_table('out_of_office', schema=None) as batch_op:
        batch_op.drop_index('ix_out_of_office_user_period')

    op.drop_table('out_of_office')
